"""ResNet-18 for CIFAR-10, as in He et al. 2016 (arXiv:1512.03385) and the study.

Read it next to He et al. §3.2-3.3 (the building block, the shortcuts) and Table 1
(the 18-layer column). The CIFAR form departs from the ImageNet one in its stem only:
conv1 is a 3x3, stride-1 convolution with no max-pool, so that its 64 feature maps are
32 x 32, the size the study shows in its Figure 3.

    conv1     3x3, 64, stride 1             (B, 3, 32, 32)  -> (B, 64, 32, 32)
    conv2_x   2 blocks of [3x3, 64] x 2     (B, 64, 32, 32) -> (B, 64, 32, 32)
    conv3_x   2 blocks of [3x3, 128] x 2    (B, 64, 32, 32) -> (B, 128, 16, 16)
    conv4_x   2 blocks of [3x3, 256] x 2    (B, 128, 16, 16) -> (B, 256, 8, 8)
    conv5_x   2 blocks of [3x3, 512] x 2    (B, 256, 8, 8)  -> (B, 512, 4, 4)
    global average pool, 10-way linear     (B, 512, 4, 4)  -> (B, 10)

`width` scales every stage (64 above), for CPU-sized runs and tests.

Initialisation: every convolution is Kaiming-normal (He et al. 2015, arXiv:1502.01852,
eq. 10: std = sqrt(2 / fan_in)); every BatchNorm has weight 1 and bias 0; the linear
layer keeps PyTorch's default (uniform in +-1/sqrt(fan_in)). All of it draws from
torch's global generator, so `torch.manual_seed` makes a model reproducible.

    python resnet18.py    # prints the parameter count and every stage's output shape
"""
import torch
from torch import nn

STAGES = ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x")


class BasicBlock(nn.Module):
    """He et al. Figure 2 (left), post-activation: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).

    The shortcut is the identity when the shape is kept, and otherwise a strided 1x1
    convolution with BatchNorm (the paper's option B, §3.3). No convolution has a bias:
    the BatchNorm after it has one.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()  # identity
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()  # after the addition

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes=10, width=64):
        super().__init__()
        w = width
        self.conv1 = nn.Sequential(nn.Conv2d(3, w, 3, 1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.conv2_x = nn.Sequential(BasicBlock(w, w, 1), BasicBlock(w, w))
        self.conv3_x = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.conv4_x = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.conv5_x = nn.Sequential(BasicBlock(4 * w, 8 * w, 2), BasicBlock(8 * w, 8 * w))
        self.fc = nn.Linear(8 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        """The post-ReLU output of every stage, by the paper's names: {"conv1": (B, w, 32, 32), ...}."""
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x):  # (B, 3, 32, 32) -> (B, num_classes)
        x = self.features(x)["conv5_x"]  # (B, 8w, 4, 4)
        x = x.mean(dim=(2, 3))  # global average pool: (B, 8w, 4, 4) -> (B, 8w)
        return self.fc(x)  # (B, 8w) -> (B, num_classes)


if __name__ == "__main__":
    model = ResNet18()
    print(f"ResNet18(width=64): {sum(p.numel() for p in model.parameters()):,} parameters")
    for name, f in model.features(torch.zeros(1, 3, 32, 32)).items():
        print(f"{name:8s} {tuple(f.shape)}")

"""ResNet-18 and ResNet-34 for CIFAR-10, as in He et al. 2016 (arXiv:1512.03385) and the study,
and their plain twins without shortcuts, the control of He et al. §4.1.

Read it next to He et al. §3.2-3.3 (the building block, the shortcuts) and Table 1
(the 18-layer and 34-layer columns). The CIFAR form departs from the ImageNet one in its stem
only: conv1 is a 3x3, stride-1 convolution with no max-pool, so that its 64 feature maps are
32 x 32, the size the study shows in its Figure 3.

    conv1     3x3, 64, stride 1             (B, 3, 32, 32)  -> (B, 64, 32, 32)
    conv2_x   n2 blocks of [3x3, 64] x 2    (B, 64, 32, 32) -> (B, 64, 32, 32)
    conv3_x   n3 blocks of [3x3, 128] x 2   (B, 64, 32, 32) -> (B, 128, 16, 16)
    conv4_x   n4 blocks of [3x3, 256] x 2   (B, 128, 16, 16) -> (B, 256, 8, 8)
    conv5_x   n5 blocks of [3x3, 512] x 2   (B, 256, 8, 8)  -> (B, 512, 4, 4)
    global average pool, 10-way linear     (B, 512, 4, 4)  -> (B, 10)

(n2, n3, n4, n5) is (2, 2, 2, 2) for ResNet-18 and (3, 4, 6, 3) for ResNet-34; the first block
of conv3_x, conv4_x and conv5_x halves the size with a stride-2 first convolution. `width`
scales every stage (64 above). `plain=True` removes every shortcut and nothing else: He et
al.'s plain network, in which a deeper net trains worse (the degradation problem, §4.1).

Initialisation: every convolution is Kaiming-normal (He et al. 2015, arXiv:1502.01852,
eq. 10: std = sqrt(2 / fan_in)); every BatchNorm has weight 1 and bias 0; the linear layer
keeps PyTorch's default. All of it draws from torch's global generator (`torch.manual_seed`).

    python resnet18.py    # prints the parameter counts and every stage's output shape
"""
import torch
from torch import nn

STAGES = ("conv1", "conv2_x", "conv3_x", "conv4_x", "conv5_x")
MULTIPLIERS = {"conv1": 1, "conv2_x": 1, "conv3_x": 2, "conv4_x": 4, "conv5_x": 8}  # x width
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # basic blocks in conv2_x ... conv5_x (Table 1)


class BasicBlock(nn.Module):
    """He et al. Figure 5 (left), the two-layer building block of ResNet-18/34 (Figure 2 draws
    the same residual block in general), post-activation:
    relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)).

    The shortcut is nn.Identity when the shape is kept, and otherwise a strided 1x1
    convolution with BatchNorm (the paper's option B, §3.3). No convolution has a bias:
    the BatchNorm after it has one. A plain block (`plain=True`) has no shortcut at all
    (None): relu(bn(conv(relu(bn(conv(x)))))).
    """

    def __init__(self, in_channels, out_channels, stride=1, plain=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None  # plain: no shortcut branch
        if not plain and (stride != 1 or in_channels != out_channels):
            self.shortcut = nn.Sequential(  # projection, option B
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))
        elif not plain:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()  # after the addition

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu2(out)


def stage(in_channels, out_channels, blocks, stride, plain):
    """One conv*_x stage: `blocks` BasicBlocks, the first one changing channels and size."""
    return nn.Sequential(BasicBlock(in_channels, out_channels, stride, plain),
                         *(BasicBlock(out_channels, out_channels, 1, plain)
                           for _ in range(blocks - 1)))


class ResNet(nn.Module):
    def __init__(self, depth=18, num_classes=10, width=64, plain=False):
        super().__init__()
        c = {name: k * width for name, k in MULTIPLIERS.items()}  # channels of each stage
        n2, n3, n4, n5 = BLOCKS[depth]
        self.depth, self.width, self.plain = depth, width, plain
        self.name = f"{'plain' if plain else 'ResNet'}-{depth}, width {width}"  # as He et al.
        self.conv1 = nn.Sequential(nn.Conv2d(3, c["conv1"], 3, 1, padding=1, bias=False),
                                   nn.BatchNorm2d(c["conv1"]), nn.ReLU())
        self.conv2_x = stage(c["conv1"], c["conv2_x"], n2, 1, plain)
        self.conv3_x = stage(c["conv2_x"], c["conv3_x"], n3, 2, plain)
        self.conv4_x = stage(c["conv3_x"], c["conv4_x"], n4, 2, plain)
        self.conv5_x = stage(c["conv4_x"], c["conv5_x"], n5, 2, plain)
        self.fc = nn.Linear(c["conv5_x"], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x):
        """The post-ReLU output of every stage, by the paper's names:
        {"conv1": (B, w, 32, 32), ..., "conv5_x": (B, 8w, 4, 4)}."""
        out = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x):  # (B, 3, 32, 32) -> (B, num_classes)
        x = self.features(x)["conv5_x"]  # (B, 8w, 4, 4)
        x = x.mean(dim=(2, 3))  # global average pool: (B, 8w, 4, 4) -> (B, 8w)
        return self.fc(x)  # (B, 8w) -> (B, num_classes)


def ResNet18(num_classes=10, width=64, plain=False):
    return ResNet(18, num_classes, width, plain)


if __name__ == "__main__":
    for depth in BLOCKS:
        for plain in (False, True):
            model = ResNet(depth, plain=plain)
            print(f"{model.name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    for stage_name, f in ResNet18().features(torch.zeros(1, 3, 32, 32)).items():
        print(f"{stage_name:8s} {tuple(f.shape)}")

"""Shapes, parameter count, gradients and initialisation of resnet18.py."""
import pytest
import torch
from torch import nn

from resnet18 import STAGES, BasicBlock, ResNet18


@pytest.mark.parametrize("width", [64, 4])
def test_stage_shapes_and_logits(width):
    model = ResNet18(width=width)
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x)
    expected = {"conv1": (width, 32), "conv2_x": (width, 32), "conv3_x": (2 * width, 16),
                "conv4_x": (4 * width, 8), "conv5_x": (8 * width, 4)}
    assert list(feats) == list(STAGES)
    for name, (c, s) in expected.items():
        assert feats[name].shape == (2, c, s, s), name
        assert (feats[name] >= 0).all(), f"{name} is post-ReLU"
    assert model(x).shape == (2, 10)
    assert ResNet18(num_classes=7, width=width)(x).shape == (2, 7)


def test_parameter_count_is_the_standard_cifar_resnet18():
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_173_962


def test_structure_follows_the_paper():
    model = ResNet18(width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)  # CIFAR stem, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1 + 8 * 2  # every ReLU is a module
    # 16 convolutions in the blocks + conv1 + fc = 18 weighted layers; 3 projection shortcuts.
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 17
    assert len([c for c in convs if c.kernel_size == (1, 1)]) == 3


def test_basic_block_matches_a_functional_oracle():
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    x = torch.randn(2, 4, 8, 8)
    F = torch.nn.functional

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    main = bn(F.conv2d(F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1)),
                       block.conv2.weight, padding=1), block.bn2)
    short = bn(F.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])
    torch.testing.assert_close(block(x), F.relu(main + short), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_c,out_c,stride", [(4, 4, 1), (4, 6, 2)], ids=["identity", "projection"])
def test_basic_block_gradcheck(in_c, out_c, stride):
    torch.manual_seed(0)
    block = BasicBlock(in_c, out_c, stride).double()
    assert (len(block.shortcut) == 0) == (stride == 1 and in_c == out_c)
    x = torch.randn(2, in_c, 6, 6, dtype=torch.double, requires_grad=True)
    params = tuple(block.parameters())

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip([n for n, _ in block.named_parameters()], ps)), (x,))
    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]), eps=1e-6, atol=1e-5)


def test_backward_reaches_every_parameter():
    model = ResNet18(width=4)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialisation_is_stated_and_reproducible():
    torch.manual_seed(3)
    a = ResNet18(width=8)
    torch.manual_seed(3)
    b = ResNet18(width=8)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    w = a.conv3_x[0].conv1.weight  # fan_in = 8 * 3 * 3
    assert abs(w.std().item() - (2 / 72) ** 0.5) < 0.1 * (2 / 72) ** 0.5
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in a.modules() if isinstance(m, nn.BatchNorm2d))

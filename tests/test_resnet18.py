"""Shapes, parameter counts, gradients and initialisation of resnet18.py's four networks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import trained_looking
from resnet18 import STAGES, BasicBlock, ResNet, ResNet18


@pytest.mark.parametrize("depth", [18, 34])
@pytest.mark.parametrize("plain", [False, True], ids=["residual", "plain"])
@pytest.mark.parametrize("width", [64, 4])
def test_stage_shapes_and_logits(depth, plain, width):
    model = ResNet(depth, width=width, plain=plain).eval()  # eval: a batch of one is a batch
    x = torch.randn(1, 3, 32, 32)
    feats = model.features(x)
    expected = {"conv1": (width, 32), "conv2_x": (width, 32), "conv3_x": (2 * width, 16),
                "conv4_x": (4 * width, 8), "conv5_x": (8 * width, 4)}
    assert list(feats) == list(STAGES)
    for name, (c, s) in expected.items():
        assert feats[name].shape == (1, c, s, s), name
        assert (feats[name] >= 0).all(), f"{name} is post-ReLU"
    assert model(x).shape == (1, 10)
    assert ResNet(depth, 7, width, plain).eval()(x).shape == (1, 7)


@pytest.mark.parametrize("depth,plain,count", [(18, False, 11_173_962), (18, True, 11_000_138),
                                               (34, False, 21_282_122), (34, True, 21_108_298)])
def test_parameter_counts_of_the_four_networks(depth, plain, count):
    assert sum(p.numel() for p in ResNet(depth, plain=plain).parameters()) == count


def bn(t, m):
    return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


@pytest.mark.parametrize("plain", [False, True], ids=["residual", "plain"])
def test_basic_block_matches_a_functional_oracle(plain):
    torch.manual_seed(0)
    block = trained_looking(BasicBlock(4, 8, stride=2, plain=plain))
    x = torch.randn(2, 4, 8, 8)
    main = bn(F.conv2d(F.relu(bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1)),
                       block.conv2.weight, padding=1), block.bn2)
    if not plain:  # the projection shortcut, option B
        main = main + bn(F.conv2d(x, block.shortcut[0].weight, stride=2), block.shortcut[1])
    torch.testing.assert_close(block(x), F.relu(main), rtol=1e-5, atol=1e-5)


def test_backward_reaches_every_parameter():
    model = ResNet18(width=4)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialisation_is_the_stated_one():  # its seed: test_train.py's oracle of the CLI
    a = ResNet18(width=8)
    w = a.conv3_x[0].conv1.weight  # fan_in = 8 * 3 * 3
    assert abs(w.std().item() - (2 / 72) ** 0.5) < 0.1 * (2 / 72) ** 0.5
    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)

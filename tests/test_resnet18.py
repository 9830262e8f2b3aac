"""Shapes, parameter counts, gradients and initialisation of resnet18.py's four networks."""
import pytest
import torch
from torch import nn

from conftest import trained_looking
from resnet18 import STAGES, BasicBlock, ResNet, ResNet18

F = torch.nn.functional


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


def test_structure_of_resnet18_and_plain34_follows_the_paper():
    model = ResNet18(width=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)  # CIFAR stem, no max-pool
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 1 + 8 * 2  # each a module
    # 16 convolutions in the blocks + conv1 + fc = 18 weighted layers; 3 projection shortcuts.
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 17
    assert len([c for c in convs if c.kernel_size == (1, 1)]) == 3
    model = ResNet(34, width=8, plain=True)  # He et al.'s blocks, and no shortcut
    assert [len(getattr(model, s)) for s in STAGES[1:]] == [3, 4, 6, 3]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 16 and all(c.kernel_size == (3, 3) for c in convs)  # 34 = 33 + fc
    assert all(b.shortcut is None for s in STAGES[1:] for b in getattr(model, s))
    assert [getattr(model, s)[0].conv1.stride for s in STAGES[2:]] == [(2, 2)] * 3


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


@pytest.mark.parametrize("in_c,out_c,stride", [(4, 4, 1), (4, 6, 2)],
                         ids=["identity", "projection"])
def test_basic_block_gradcheck(in_c, out_c, stride):
    torch.manual_seed(0)
    block = BasicBlock(in_c, out_c, stride).double()
    assert isinstance(block.shortcut, torch.nn.Identity) == (stride == 1 and in_c == out_c)
    x = torch.randn(2, in_c, 6, 6, dtype=torch.double, requires_grad=True)
    params = tuple(block.parameters())

    names = [n for n, _ in block.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,))
    inputs = (x, *[p.detach().requires_grad_() for p in params])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_backward_reaches_every_parameter():
    model = ResNet18(width=4)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
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
    bns = [m for m in a.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((m.weight == 1).all() and (m.bias == 0).all() for m in bns)

"""deconvnet.project against an independent oracle: autograd with Zeiler & Fergus' ReLU rule."""
import copy

import pytest
import torch
from torch import nn

from deconvnet import project
from conftest import trained_looking
from resnet18 import STAGES, ResNet, ResNet18


class DeconvReLU(torch.autograd.Function):
    """relu going forward; going back, relu of the incoming signal (guided: and the forward
    mask)."""

    @staticmethod
    def forward(ctx, x, guided):
        ctx.save_for_backward(x)
        ctx.guided = guided
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        r = grad.clamp(min=0)
        return (r * (x > 0) if ctx.guided else r), None


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return trained_looking(ResNet18(width=4), torch.double)


def oracle(model, x, layer, channel, keep, guided):
    net = copy.deepcopy(model).eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(lambda m, inp, out: DeconvReLU.apply(inp[0], guided))
    x = x.clone().requires_grad_(True)
    act = net.features(x)[layer]
    seed = torch.zeros_like(act)
    for c in range(act.shape[1]) if channel is None else [channel]:
        a = act[:, c].detach()  # (B, h, w)
        if keep == "max":
            top = a.flatten(1).argmax(1)
            rows, cols = top // a.shape[-1], top % a.shape[-1]
            b = torch.arange(len(a))
            seed[b, c, rows, cols] = a[b, rows, cols]
        else:
            seed[:, c] = a
    act.backward(seed)
    return x.grad


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("keep", ["max", "map"])
@pytest.mark.parametrize("layer", STAGES)
def test_project_equals_the_autograd_oracle(model, layer, keep, guided):
    x = torch.randn(2, 3, 32, 32, dtype=torch.double)
    channel = 1
    got = project(model, x, layer, channel, keep, guided)
    want = oracle(model, x, layer, channel, keep, guided)
    assert got.shape == x.shape and got.dtype == torch.double
    assert want.abs().max() > 0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("layer", STAGES)
@pytest.mark.parametrize("depth,plain", [(18, False), (18, True), (34, False), (34, True)])
def test_project_of_a_whole_layer_equals_the_autograd_oracle(depth, plain, layer, guided):
    torch.manual_seed(depth + plain)
    net = trained_looking(ResNet(depth, width=4, plain=plain), torch.double)
    x = torch.randn(2, 3, 32, 32, dtype=torch.double)
    got = project(net, x, layer, guided=guided)
    want = oracle(net, x, layer, None, "map", guided)
    assert want.abs().max() > 0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10


def test_guided_differs_from_plain(model):
    x = torch.randn(1, 3, 32, 32, dtype=torch.double)
    plain = project(model, x, "conv3_x", 2, "map")
    guided = project(model, x, "conv3_x", 2, "map", guided=True)
    assert not torch.allclose(plain, guided)


def test_project_leaves_the_model_untouched(model):
    model.train()
    model.conv2_x[0].bn1.eval()  # a mixed-mode model stays mixed
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    project(model, torch.randn(3, 3, 32, 32, dtype=torch.double), "conv4_x", 0, guided=True)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.train()


def test_project_follows_the_model_dtype_and_rejects_bad_arguments(model):
    small = ResNet18(width=2)
    r = project(small, torch.randn(1, 3, 32, 32, dtype=torch.double), "conv5_x", 3)
    assert r.dtype == torch.float32 and r.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="channels"):
        project(small, torch.randn(1, 3, 32, 32), "conv1", 2)
    with pytest.raises(ValueError, match="layer"):
        project(small, torch.randn(1, 3, 32, 32), "fc", 0)

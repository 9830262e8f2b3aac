"""deconvnet.py against its oracles: autograd with Zeiler & Fergus' ReLU rule for the deconvnet,
one forward pass per position for occlusion, the class activation map and autograd by hand for
Grad-CAM, and the textbook formula of Spearman's rho."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvnet
from conftest import trained_looking
from deconvnet import project
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


def test_project_follows_the_model_dtype():
    r = project(ResNet18(width=2), torch.randn(1, 3, 32, 32, dtype=torch.double), "conv5_x", 3)
    assert r.dtype == torch.float32 and r.shape == (1, 3, 32, 32)


# --- Does the network look at the object? --------------------------------------------------

@pytest.fixture(scope="module")
def nets():
    """A trained-looking network and its plain twin, in eval mode (seed 1: not the weights of
    deconvnet.reinitialised)."""
    torch.manual_seed(1)
    return [trained_looking(ResNet(depth, width=4, plain=plain))
            for depth, plain in ((18, False), (34, True))]


def image(seed=0, dtype=torch.float32):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("size,stride", [(8, 2), (4, 4), (16, 8), (5, 3)])
def test_occlusion_equals_one_forward_pass_per_position(nets, size, stride):
    x, n = image(), (32 - size) // stride + 1
    for model in nets:
        got = deconvnet.occlusion(model, x, target=3, size=size, stride=stride, fill=0.0)
        assert got.shape == (n, n)
        want = torch.empty(n, n)
        with torch.no_grad():
            for i in range(n):
                for j in range(n):
                    y = x.clone()
                    y[..., i * stride:i * stride + size, j * stride:j * stride + size] = 0.0
                    want[i, j] = F.softmax(model(y), 1)[0, 3]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_occlusion_feature_equals_one_forward_pass_per_position(nets):
    x, model = image(1), nets[0]
    got = deconvnet.occlusion_feature(model, x, "conv4_x", channel=5, size=8, stride=4, fill=0.5)
    want = torch.empty(7, 7)
    with torch.no_grad():
        for i in range(7):
            for j in range(7):
                y = x.clone()
                y[..., 4 * i:4 * i + 8, 4 * j:4 * j + 8] = 0.5
                want[i, j] = model.features(y)["conv4_x"][0, 5].sum()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradcam_at_conv5_is_the_class_activation_map(nets):
    """logits = fc(mean over positions of conv5_x), so Grad-CAM there is Zhou et al.'s CAM:
    relu(sum_k W[target, k] * A_k) / (h * w)."""
    x = image(2, torch.float64)
    for model in nets:
        model = model.double()
        with torch.no_grad():
            A = model.features(x)["conv5_x"][0]  # (C, 4, 4)
        for target in (0, 7):
            cam = torch.relu((model.fc.weight[target][:, None, None] * A).sum(0)) / 16
            torch.testing.assert_close(deconvnet.gradcam(model, x, target), cam, rtol=1e-10,
                                       atol=1e-12)
        model.float()


@pytest.mark.parametrize("layer", STAGES[:-1])
def test_gradcam_at_any_stage_equals_autograd_by_hand(nets, layer):
    x, model = image(3, torch.float64), nets[1].double()
    h, A = x, None
    for name in STAGES:  # the forward pass written out, keeping the stage's output
        h = getattr(model, name)(h)
        if name == layer:
            A = h
            A.retain_grad()
    model.fc(h.mean(dim=(2, 3)))[0, 4].backward()
    want = torch.relu((A.grad[0].mean(dim=(1, 2))[:, None, None] * A[0]).sum(0)).detach()
    got = deconvnet.gradcam(model, x, 4, layer)
    model.zero_grad()
    model.float()
    assert got.shape == A.shape[2:]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_reinitialised_network_has_the_shape_of_the_trained_one_and_other_maps(nets):
    model, x = nets[0], image(4)
    state = torch.random.get_rng_state()
    fresh = deconvnet.reinitialised(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert not fresh.training and not torch.equal(fresh.fc.weight, model.fc.weight)
    a, b = deconvnet.gradcam(model, x, 2), deconvnet.gradcam(fresh, x, 2)
    assert not torch.allclose(a, b)
    assert not torch.allclose(deconvnet.occlusion(model, x, 2), deconvnet.occlusion(fresh, x, 2))


def test_spearman_equals_the_textbook_formula_without_ties():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    n = 64
    d = (a.flatten().argsort().argsort() - b.flatten().argsort().argsort()).double()
    textbook = 1 - 6 * float((d ** 2).sum()) / (n * (n * n - 1))
    assert deconvnet.spearman(a, b) == pytest.approx(textbook, abs=1e-12)
    assert deconvnet.spearman(a, 2 * a + 1) == pytest.approx(1.0)
    assert deconvnet.spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_gives_ties_their_mean_rank():
    assert deconvnet.ranks(torch.tensor([0.0, 3.0, 0.0, 1.0])).tolist() == [0.5, 3.0, 0.5, 2.0]
    # Pearson of the ranks (0.5, 0.5, 2, 3) and (0, 1, 2, 3), by hand: 0.9486832980505138.
    rho = deconvnet.spearman(torch.tensor([0.0, 0.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert rho == pytest.approx(0.9486832980505138)

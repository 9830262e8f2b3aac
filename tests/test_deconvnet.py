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


@pytest.mark.parametrize("guided", [False, True], ids=["deconvnet", "guided"])
@pytest.mark.parametrize("seed,keep", [("channel", "max"), ("channel", "map"), ("layer", "map")])
@pytest.mark.parametrize("layer", STAGES)
@pytest.mark.parametrize("depth,plain", [(18, False), (18, True), (34, False), (34, True)])
def test_project_equals_the_autograd_oracle(depth, plain, layer, seed, keep, guided):
    torch.manual_seed(depth + plain)
    net = trained_looking(ResNet(depth, width=4, plain=plain), torch.double)
    x = torch.randn(2, 3, 32, 32, dtype=torch.double)
    channel = None
    if seed == "channel":  # the most active one: a dead channel projects nothing
        channel = int(net.features(x)[layer].sum((0, 2, 3)).argmax())
    got, want = project(net, x, layer, channel, keep, guided), oracle(net, x, layer, channel,
                                                                      keep, guided)
    assert got.shape == x.shape and got.dtype == torch.double and want.abs().max() > 0
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10


def test_receptive_field_is_the_box_that_a_projection_reaches():
    r = torch.zeros(3, 32, 32)
    r[1, 5, 10], r[2, 8, 12] = 1.0, -2.0  # rows 5 to 8, columns 10 to 12
    assert deconvnet.receptive_field(r) == (slice(5, 9), slice(10, 13))
    assert deconvnet.receptive_field(torch.zeros(3, 32, 32)) == (slice(None), slice(None))


def test_project_leaves_the_model_untouched():
    model = trained_looking(ResNet18(width=4), torch.double).train()
    model.conv2_x[0].bn1.eval()  # a mixed-mode model stays mixed
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    project(model, torch.randn(3, 3, 32, 32, dtype=torch.double), "conv4_x", 0, guided=True)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.fixture(scope="module")
def nets():
    """Trained-looking ResNet-18 and plain-34, in eval mode (seed 1: not reinitialised's)."""
    torch.manual_seed(1)
    return [trained_looking(ResNet(depth, width=4, plain=plain))
            for depth, plain in ((18, False), (34, True))]


def image(seed=0, dtype=torch.float32):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("size,stride,fill,batch", [(8, 2, 0.0, 256), (4, 4, 0.5, 256),
                                                    (16, 8, 0.0, 256), (5, 3, 0.0, 7)])
def test_occlusion_equals_one_forward_pass_per_position(nets, size, stride, fill, batch):
    x, n = image(), (32 - size) // stride + 1
    for model in nets:
        got = deconvnet.occlusion(model, x, 3, size, stride, fill, batch)  # 7: several batches
        want = torch.empty(n, n)
        with torch.no_grad():
            for i in range(n):
                for j in range(n):
                    y = x.clone()
                    y[..., i * stride:i * stride + size, j * stride:j * stride + size] = fill
                    want[i, j] = F.softmax(model(y), 1)[0, 3]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", STAGES)
def test_gradcam_equals_autograd_by_hand_and_at_conv5_the_class_activation_map(nets, layer):
    x, model = image(3, torch.float64), copy.deepcopy(nets[1]).double()
    h, A = x, None
    for name in STAGES:  # the forward pass written out, keeping the stage's output
        h = getattr(model, name)(h)
        if name == layer:
            A = h
            A.retain_grad()
    model.fc(h.mean(dim=(2, 3)))[0, 4].backward()
    want = torch.relu((A.grad[0].mean(dim=(1, 2))[:, None, None] * A[0]).sum(0)).detach()
    if layer == "conv5_x":  # logits = fc(mean of conv5_x): Zhou et al.'s CAM, relu(W_4 A) / 16
        want = torch.relu((model.fc.weight[4][:, None, None] * A[0]).sum(0)).detach() / 16
    got = deconvnet.gradcam(model, x, 4, layer)
    assert got.shape == A.shape[2:]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_a_reinitialised_network_has_the_shape_of_the_trained_one_and_other_weights(nets):
    model, state = nets[0], torch.random.get_rng_state()
    fresh = deconvnet.reinitialised(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert not fresh.training and not torch.equal(fresh.fc.weight, model.fc.weight)


def test_the_randomisation_test_sets_each_map_against_fresh_weights(nets):
    model, x, y = nets[0], torch.cat([image(5), image(6)]), torch.tensor([1, 7])
    rho = deconvnet.sanity(model, x, y)
    fresh = deconvnet.reinitialised(model)
    occluded = [deconvnet.spearman(deconvnet.occlusion(model, x[i:i + 1], int(y[i])),
                                   deconvnet.occlusion(fresh, x[i:i + 1], int(y[i])))
                for i in range(2)]
    assert rho["occlusion"][0] == pytest.approx(sum(occluded) / 2)
    assert max(m for m, _, _ in rho.values()) < 0.99  # not the network against itself
    same = deconvnet.sanity(fresh, x, y)  # fresh weights against themselves: every rho 1
    assert all(m == pytest.approx(1.0) for m, _, n in same.values() if n < 2)


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

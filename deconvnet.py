"""A deconvnet (Zeiler & Fergus 2014, arXiv:1311.2901, §2.1) for the networks of resnet18.py,
and the tests that tell a picture of the object from evidence that the network uses it.

To see what one activation responds to, keep it alone in its layer and map it back down to
pixel space, undoing each layer in turn:
- a ReLU becomes a ReLU applied to the reconstructed signal (the signal is "rectified");
- a convolution becomes the transposed convolution with the same weights ("filtering" with
  the flipped filters), its stride and padding, and the output padding that restores the size;
- an eval-mode BatchNorm, y = gamma * (x - mean) / sqrt(var + eps) + beta, passes the signal
  down scaled by gamma / sqrt(var + eps);
- a residual block, out = relu2(main(x) + shortcut(x)), rectifies once at relu2, then sends
  the signal down both branches and sums what comes out of them.

Zeiler & Fergus' network had max-pooling, whose "switches" (where each maximum was) carry the
image into the projection. This ResNet has none: for one channel, the projection depends on the
image only through the chosen activations (which channel, where, how strong). With
`channel=None` (the study's Figure 5: "the reconstructed image from conv1 and conv5") the seed
is the whole layer, so the image enters through all of its activations. `guided=True` also
multiplies by each forward ReLU's mask (guided backpropagation, Springenberg et al. 2015,
arXiv:1412.6806), which brings the image back in at every layer.

    from deconvnet import project
    r = project(model, x, "conv5_x")                          # the whole layer, (B, 3, 32, 32)
    r = project(model, x, "conv5_x", channel=7, keep="max")   # one activation of channel 7

A picture of the object is not evidence that the network uses it: guided backpropagation
draws nearly the same picture with random weights (Adebayo et al. 2018, arXiv:1810.03292).
So, below: `occlusion` (Zeiler & Fergus §4.2) slides a grey square over the image and reads
P(true class); `gradcam` (Selvaraju et al. 2017, arXiv:1610.02391) weighs a stage's channels by
the mean gradient of the class logit; and `sanity`, Adebayo et al.'s randomisation test, ranks
each map on the trained network against the same map on fresh weights: a high correlation
means the map shows the input, not what the network learned. Each takes a model in eval mode
and `x`, one normalised image as a batch of one: (1, 3, 32, 32).
"""
import torch
import torch.nn.functional as F
from torch import nn

from resnet18 import STAGES, ResNet


def _relu_down(r, mask, guided):
    """Zeiler & Fergus: rectify the signal; guided backpropagation also keeps the forward mask."""
    r = r.clamp(min=0)
    return r * mask if guided else r


def _conv_bn_down(r, conv, bn, in_size):
    """Undo conv -> bn: scale by the BatchNorm, then transpose the convolution back to
    `in_size`: (B, C_out, h, w) -> (B, C_in, in_size, in_size)."""
    r = r * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    extra = in_size - ((r.shape[-1] - 1) * s - 2 * p + k)  # output padding: 1 for stride 2
    return F.conv_transpose2d(r, conv.weight, stride=s, padding=p, output_padding=extra)


def _block_down(r, block, masks, in_size, guided):
    """Undo one BasicBlock: (B, C_out, h, w) -> (B, C_in, in_size, in_size)."""
    r = _relu_down(r, masks[block.relu2], guided)  # the ReLU after the addition, once
    main = _conv_bn_down(r, block.conv2, block.bn2, r.shape[-1])
    main = _relu_down(main, masks[block.relu1], guided)
    main = _conv_bn_down(main, block.conv1, block.bn1, in_size)
    if block.shortcut is None:  # a plain block: no shortcut branch on the way down either
        return main
    if isinstance(block.shortcut, nn.Identity):
        return main + r
    return main + _conv_bn_down(r, *block.shortcut, in_size)  # the projection: conv, bn


@torch.no_grad()
def project(model, x, layer, channel=None, keep="map", guided=False):
    """Deconvnet projection of `layer` ("conv1" ... "conv5_x"), or of one `channel`, to pixels:
    x (B, 3, H, W), normalised -> (B, 3, H, W). The seed: the layer's activations, those of
    `channel` alone when one is given, and with keep="max" only each kept channel's strongest
    position. The forward pass runs in eval mode (running BN statistics), modes restored."""
    p = next(model.parameters())
    x = x.to(p.device, p.dtype)

    # Forward, recording each ReLU's mask (where its input was > 0).
    masks = {}
    def record(m, inp, out):
        masks[m] = (out > 0).to(out.dtype)
    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.ReLU)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        feats = model.features(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    act = feats[layer]  # (B, C, h, w)

    # The seed r: the real activations of the layer, or of one channel (the others zeroed),
    # and for keep="max" only each kept channel's strongest position.
    r = act.clone()
    if channel is not None:
        r = torch.zeros_like(act)
        r[:, channel] = act[:, channel]
    if keep == "max":
        flat = r.flatten(2)  # (B, C, h * w)
        top = flat.argmax(2, keepdim=True)  # (B, C, 1)
        r = torch.zeros_like(flat).scatter_(2, top, flat.gather(2, top)).view_as(r)

    # Down: the stages from `layer` back to conv1, each block in reverse, then conv1 itself.
    sizes = {name: f.shape[-1] for name, f in feats.items()}
    for i in range(STAGES.index(layer), 0, -1):
        blocks = list(getattr(model, STAGES[i]))
        in_sizes = [sizes[STAGES[i - 1]]] + [sizes[STAGES[i]]] * (len(blocks) - 1)
        for block, in_size in reversed(list(zip(blocks, in_sizes))):
            r = _block_down(r, block, masks, in_size, guided)
    conv, bn, relu = model.conv1
    r = _relu_down(r, masks[relu], guided)
    return _conv_bn_down(r, conv, bn, x.shape[-1])  # (B, w, H, W) -> (B, 3, H, W)


def receptive_field(r):
    """The rows and columns a projection r (3, H, W) of one activation reaches, as two slices:
    the part of the image that the activation sees (all of it where r is zero)."""
    rows, cols = (r.abs().sum(0) > 0).nonzero(as_tuple=True)
    if len(rows) == 0:
        return slice(None), slice(None)
    return slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1)


# --- Does the network look at the object? -----------------------------------------------------

@torch.no_grad()
def occlusion(model, x, target, size=8, stride=2, fill=0.0, batch=256):
    """Zeiler & Fergus §4.2: entry (i, j) is the softmax probability of class `target` when the
    square x[..., i*stride : i*stride+size, j*stride : j*stride+size] is set to `fill` (0 is the
    mean colour, once normalised). (1, 3, H, W) -> (n, n), n = (H - size) // stride + 1."""
    H = x.shape[-1]
    n = (H - size) // stride + 1
    start = torch.arange(n, device=x.device)[:, None] * stride  # (n, 1)
    pixel = torch.arange(H, device=x.device)  # (H,)
    inside = (pixel >= start) & (pixel < start + size)  # (n, H): pixel inside square i
    mask = inside[:, None, :, None] & inside[None, :, None, :]  # (n, n, H, W)
    copies = torch.where(mask.view(n * n, 1, H, H), fill, x)  # (n * n, 3, H, W), row-major
    return torch.cat([model(c).softmax(1)[:, target] for c in copies.split(batch)]).view(n, n)


def gradcam(model, x, target, layer="conv5_x"):
    """Grad-CAM (Selvaraju et al. 2017, eq. 1-2) at stage `layer`, at its own resolution:
    relu(sum_k alpha_k * A_k), A_k the k-th channel of the stage's output (post-ReLU) and
    alpha_k the mean over positions of d y_target / d A_k, y_target the class logit.
    (1, 3, 32, 32) -> (h, w), (4, 4) for conv5_x. Upsampling for display is the figure's."""
    saved = []
    hook = getattr(model, layer).register_forward_hook(lambda m, inp, out: saved.append(out))
    try:
        with torch.enable_grad():
            logit = model(x)[0, target]
            (grad,) = torch.autograd.grad(logit, saved[0])  # d y / d A: (1, C, h, w)
    finally:
        hook.remove()
    alpha = grad[0].mean(dim=(1, 2))  # (C,)
    return torch.relu((alpha[:, None, None] * saved[0][0].detach()).sum(0))  # (h, w)


def reinitialised(model, seed=0):
    """The same architecture with fresh weights (resnet18.py's initialisation, `seed`), in eval
    mode on the same device and dtype (Adebayo et al. §3.1); the global generator is untouched."""
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = ResNet(model.depth, width=model.width, plain=model.plain)
    return fresh.to(p.device, p.dtype).eval()


def ranks(v):
    """Ranks of a 1-D tensor from 0, ties given the mean of their ranks (as Spearman's rho
    needs: a Grad-CAM map has many zeros)."""
    rank = torch.empty(len(v), dtype=torch.float64)
    rank[v.argsort()] = torch.arange(len(v), dtype=torch.float64)
    _, group = torch.unique(v, return_inverse=True)
    mean = torch.zeros(int(group.max()) + 1, dtype=torch.float64).index_add_(0, group, rank)
    return (mean / torch.bincount(group))[group]


def spearman(a, b):
    """Spearman's rank correlation of two maps of the same shape (the Pearson correlation of
    their ranks); NaN when one of them is constant."""
    ra, rb = ranks(a.flatten().cpu()), ranks(b.flatten().cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def maps(model, x, target):
    """The maps of localize.png, of one image on one network: occlusion of the class, Grad-CAM
    (4 x 4), the guided projection from all of conv5_x, and the class probability."""
    with torch.no_grad():
        prob = model(x).softmax(1)[0, target].item()
    return {"occlusion": occlusion(model, x, target), "gradcam": gradcam(model, x, target),
            "guided": project(model, x, "conv5_x", guided=True), "prob": prob}


def sanity(model, images, labels):
    """The randomisation test over `images` (normalised, (N, 3, 32, 32), on the model's device)
    of classes `labels`: Spearman's rho between each map on the trained network and on random
    weights. {map: (mean, std, images whose rho is undefined: a constant map)}."""
    fresh = reinitialised(model)
    rho = {k: [] for k in ("deconvnet", "guided", "occlusion", "gradcam")}
    for x, y in zip(images.split(1), labels):
        a, b = maps(model, x, int(y)), maps(fresh, x, int(y))
        a["deconvnet"], b["deconvnet"] = project(model, x, "conv5_x"), project(fresh, x, "conv5_x")
        for k in rho:
            if k in ("deconvnet", "guided"):  # a pixel map: the size of the projection
                a[k], b[k] = a[k][0].abs().sum(0), b[k][0].abs().sum(0)
            rho[k].append(spearman(a[k], b[k]))
    rho = {k: torch.tensor(v, dtype=torch.float64) for k, v in rho.items()}
    return {k: (v[~v.isnan()].mean().item(), v[~v.isnan()].std().item(), int(v.isnan().sum()))
            for k, v in rho.items()}

"""A deconvnet (Zeiler & Fergus 2014, arXiv:1311.2901, §2.1) for the networks of resnet18.py.

To see what one activation responds to, keep it alone in its layer and map it back down to
pixel space, undoing each layer in turn:
- a ReLU becomes a ReLU applied to the reconstructed signal (the signal is "rectified");
- a convolution becomes the transposed convolution with the same weights ("filtering" with
  the flipped filters), with its stride and padding, and for stride 2 the output padding
  that restores the input size; no bias;
- an eval-mode BatchNorm is y = gamma * (x - mean) / sqrt(var + eps) + beta: its linear part
  passes the signal down scaled by gamma / sqrt(var + eps);
- a residual block, out = relu2(main(x) + shortcut(x)), rectifies once at relu2, then sends
  the signal in full down both branches and sums what comes out of them.

Zeiler & Fergus' network had max-pooling, whose "switches" (where each maximum was) carry
the image into the projection. This ResNet has no max-pooling, so there are no switches: for
one channel, the projection depends on the image only through the chosen activations (which
channel, where, and how strong); the path down is the same for every image. With
`channel=None` (the study's Figure 5: "the reconstructed image from conv1 and conv5") the
seed is the whole layer, every activation as it is, so the image enters through all of the
layer's activations, and the reconstruction shows what the whole layer keeps of the image.
`guided=True` also multiplies by each forward ReLU's mask (guided backpropagation,
Springenberg et al. 2015, arXiv:1412.6806), which brings the image back in at every layer.

    from deconvnet import project
    r = project(model, x, "conv5_x")                          # the whole layer, (B, 3, 32, 32)
    r = project(model, x, "conv5_x", channel=7, keep="max")   # one activation of channel 7
"""
import torch
import torch.nn.functional as F
from torch import nn

from resnet18 import STAGES


def _relu_down(r, mask, guided):
    """Zeiler & Fergus: rectify the signal; guided backpropagation also keeps the forward mask."""
    r = r.clamp(min=0)
    return r * mask if guided else r


def _conv_bn_down(r, conv, bn, in_size):
    """Undo conv -> bn: scale by the BatchNorm, then transpose the convolution back to
    `in_size`."""
    r = r * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
    (k, _), (s, _), (p, _) = conv.kernel_size, conv.stride, conv.padding
    # The output padding: 1 for stride 2 on even sizes.
    extra = in_size - ((r.shape[-1] - 1) * s - 2 * p + k)
    # (B, C_out, h, w) -> (B, C_in, H, W)
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
    """Deconvnet projection of `layer` ("conv1" ... "conv5_x"), or of one `channel`, to pixels.

    x: (B, 3, H, W) images, normalised as for the model. The seed is the layer's activations,
    with every channel but `channel` zeroed when one is given; keep="max" also zeroes every
    position but each kept channel's strongest one (keep="map" keeps whole maps).
    Returns (B, 3, H, W).
    The forward pass runs in eval mode (running BN statistics); each module's mode is restored.
    """
    if layer not in STAGES or keep not in ("max", "map"):
        raise ValueError(f"layer must be one of {STAGES} and keep 'max' or 'map', "
                         f"got {layer!r}, {keep!r}")
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
    if channel is not None and not 0 <= channel < act.shape[1]:
        raise ValueError(f"{layer} has {act.shape[1]} channels, no channel {channel}")

    # The seed: the real activations of the layer, or of one channel (the others zeroed), and
    # for keep="max" only each kept channel's strongest position.
    seed = act.clone()
    if channel is not None:
        seed = torch.zeros_like(act)
        seed[:, channel] = act[:, channel]
    if keep == "max":
        flat = seed.flatten(2)  # (B, C, h * w)
        top = flat.argmax(2, keepdim=True)  # (B, C, 1)
        seed = torch.zeros_like(flat).scatter_(2, top, flat.gather(2, top)).view_as(seed)

    # Down: the stages from `layer` back to conv1, each block in reverse, then conv1 itself.
    sizes = {name: f.shape[-1] for name, f in feats.items()}
    r = seed
    for i in range(STAGES.index(layer), 0, -1):
        blocks = list(getattr(model, STAGES[i]))
        in_sizes = [sizes[STAGES[i - 1]]] + [sizes[STAGES[i]]] * (len(blocks) - 1)
        for block, in_size in reversed(list(zip(blocks, in_sizes))):
            r = _block_down(r, block, masks, in_size, guided)
    conv, bn, relu = model.conv1
    r = _relu_down(r, masks[relu], guided)
    return _conv_bn_down(r, conv, bn, x.shape[-1])  # (B, w, H, W) -> (B, 3, H, W)

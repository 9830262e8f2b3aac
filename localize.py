"""Does the network look at the ship? Two tests of localisation, and a sanity check for any map.

The study reads its Figure 5 (a deconvnet projection from conv5) as "the entire localized
ship". A picture of the ship does not show that the network uses the ship: guided
backpropagation draws nearly the same picture for a network with random weights (Adebayo et al.
2018, "Sanity Checks for Saliency Maps", arXiv:1810.03292). So:

- `occlusion` (Zeiler & Fergus 2014, arXiv:1311.2901, §4.2 and Figure 7): slide a grey
  square over the image and watch the probability of the true class. If the network uses the
  ship, covering the ship lowers it.
- `occlusion_feature`: the same, watching one channel of a stage (Figure 7, second column).
- `gradcam` (Selvaraju et al. 2017, arXiv:1610.02391): weigh each channel of a stage by the
  mean gradient of the class logit, at the stage's own resolution.
- `reinitialised` and `spearman`: the randomisation test of Adebayo et al. A map computed on the
  trained network and on the same architecture with fresh weights; a high rank correlation
  between the two means the map shows the input, not what the network learned.

- `maps` computes all of Figure 7's maps of one image; `sanity` runs the randomisation test
  over many images and tabulates it.

Every function takes a model of resnet18.py (any depth, residual or plain) in eval mode and
`x`, one normalised image as a batch of one: (1, 3, 32, 32).
"""
import torch

from deconvnet import project
from resnet18 import ResNet


def occluded(x, size, stride, fill):
    """Every copy of x with one size x size square set to `fill`, the square moving by
    `stride`: (1, 3, H, W) -> (n * n, 3, H, W), n = (H - size) // stride + 1, row-major."""
    H = x.shape[-1]
    n = (H - size) // stride + 1
    start = torch.arange(n, device=x.device)[:, None] * stride  # (n, 1)
    pixel = torch.arange(H, device=x.device)  # (H,)
    inside = (pixel >= start) & (pixel < start + size)  # (n, H): pixel inside square i
    mask = inside[:, None, :, None] & inside[None, :, None, :]  # (n, n, H, W)
    return torch.where(mask.view(n * n, 1, H, H), torch.tensor(fill, dtype=x.dtype,
                                                              device=x.device), x)


@torch.no_grad()
def occlusion(model, x, target, size=8, stride=2, fill=0.0, batch=256):
    """Zeiler & Fergus §4.2: entry (i, j) is the softmax probability of class `target` when the
    square x[..., i*stride : i*stride+size, j*stride : j*stride+size] is set to `fill` (0 is the
    data's mean colour after normalisation). (1, 3, 32, 32) -> (n, n), n = (32 - size) //
    stride + 1; all copies go through the network in batches of `batch`."""
    copies = occluded(x, size, stride, fill)  # (n * n, 3, 32, 32)
    n = (x.shape[-1] - size) // stride + 1
    probs = torch.cat([model(c).softmax(1)[:, target] for c in copies.split(batch)])
    return probs.view(n, n)


@torch.no_grad()
def occlusion_feature(model, x, layer, channel, size=8, stride=2, fill=0.0, batch=256):
    """As `occlusion`, for the total activation of `channel` of stage `layer` ("conv1" ...
    "conv5_x"): Zeiler & Fergus Figure 7, second column. (1, 3, 32, 32) -> (n, n)."""
    copies = occluded(x, size, stride, fill)
    n = (x.shape[-1] - size) // stride + 1
    totals = torch.cat([model.features(c)[layer][:, channel].sum((1, 2))
                        for c in copies.split(batch)])  # (n * n,)
    return totals.view(n, n)


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
    mode on the same device and dtype: the randomisation test of Adebayo et al. §3.1. The global
    random generator is left as it was."""
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
    """Figure 7's maps of one image for one network: occlusion of the class, occlusion of the
    strongest conv5_x channel (a share of its unoccluded total), Grad-CAM (4 x 4), the guided
    projection from all of conv5_x; the channel, and the class probability."""
    with torch.no_grad():
        prob = model(x).softmax(1)[0, target].item()
        act = model.features(x)["conv5_x"][0].sum((1, 2))  # (C,) total per channel
    channel = int(act.argmax())
    return {"occlusion": occlusion(model, x, target),
            "feature": occlusion_feature(model, x, "conv5_x", channel)
            / act[channel].clamp(min=1e-12),
            "gradcam": gradcam(model, x, target),  # (4, 4)
            "guided": project(model, x, "conv5_x", guided=True),
            "channel": channel, "prob": prob}


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
    out = {}
    for k, values in rho.items():
        v = torch.tensor(values, dtype=torch.float64)
        ok = v[~v.isnan()]
        out[k] = (ok.mean().item(), ok.std().item(), int(v.isnan().sum()))
    return out

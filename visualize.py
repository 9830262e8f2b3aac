"""The study's Figures 1-5 from a checkpoint of train.py, Figure 6 (runs compared), Figure 7
(does the network look at the object?), and report.md: the study redone for this run, with
Table 1, every figure with a caption from the run's own numbers, and each of the study's claims
with a verdict by the rules below. For a run of --width w (the paper's 64): Figure 2 shows the w
conv1 filters, 3 the w conv1 maps of a test image, 4 its 8w conv5_x maps, 5 deconvnet
reconstructions (Zeiler & Fergus 2014) from whole layers and channel by channel; 7 occlusion
(Zeiler & Fergus §4.2), Grad-CAM and the guided projection, also on random weights (Adebayo et
al. 2018). `--top9 conv5_x:7` draws the nine test images that most activate a channel (Zeiler
& Fergus, Fig. 2). Figures 3-5 and 7 need test images: --data, else the run's own folder.

    python visualize.py --ckpt run.pt                    # writes figures/fig*.png, report.md
    python visualize.py --ckpt run.pt --image ship --top9 conv5_x:7 --sanity 10 --out figures
    python visualize.py --ckpt run.pt --compare plain.pt # adds fig6_compare.png
"""
import argparse
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

import cifar
import deconvnet
import train
from deconvnet import project
from resnet18 import STAGES, WIDTHS
from train import ITERS, TEST_ACC

matplotlib.use("Agg")  # files only, no window (honoured until the first figure)
TOP_CHANNELS = 8  # channels per layer in Figure 5's per-channel rows
DPI = 100  # pixels per inch of the figures
FIGURES = ("fig1_learning_curve.png", "fig2_conv1_filters.png", "fig3_conv1_maps.png",
           "fig4_conv5_maps.png", "fig5_deconvnet.png", "fig6_compare.png", "fig7_localize.png")
TITLES = tuple(f"Figure {n[3]}: {n[5:-4].replace('_', ' ')}" for n in FIGURES)  # "conv1 maps"
# The rules of the verdicts (`claims`), each tolerance stated once:
ACC_POINTS = 3.0  # the test accuracy at 10,000 and 50,000 iterations: within 3 points either way
JUMP = (3.0, 2000)  # across the drop: up by 3 points or more within 2,000 iterations
RISE = 0.05  # late over-fitting: the last test loss at least 5 % above its lowest after the drop
TRAIN_ALL = 99.5  # train accuracy (%) that counts as 100 %
BLANK_SHARE = 0.25  # "a lot of blank convolution outputs": at least a quarter of conv5_x maps
OCCLUDED, RHO = 0.5, 0.5  # localised: occluded P(class) below half; occlusion map's rho below 0.5


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="run.pt", help="checkpoint of train.py (default run.pt)")
    p.add_argument("--data", help="CIFAR-10 folder with the test images (default: the run's)")
    p.add_argument("--image", default="0", help="the test image of Figures 3-5 and 7: its "
                   "index, or a class name for its first test image, e.g. ship (default 0)")
    p.add_argument("--out", default="figures", help="folder for the figures and report.md "
                   "(default figures)")
    p.add_argument("--top9", metavar="LAYER:CHANNEL", help="also draw the 9 test images that "
                   "most activate this channel, e.g. conv5_x:7 (for --width w: conv1 and "
                   "conv2_x have w channels, conv3_x 2w, conv4_x 4w, conv5_x 8w)")
    p.add_argument("--compare", nargs="+", metavar="CKPT", default=[],
                   help="other checkpoints, drawn with --ckpt in fig6_compare.png")
    p.add_argument("--figures", type=int, nargs="+", choices=range(1, 8), metavar="K",
                   default=list(range(1, 8)), help="which figures to draw, e.g. --figures 1 7 "
                   "(default all; 6 only with --compare)")
    p.add_argument("--sanity", type=int, default=0, metavar="N", help="also run the "
                   "randomisation test of every Figure 7 map over the first N test images of "
                   "each class (default 0: not run; 10 takes a minute)")
    p.add_argument("--device", type=train.device, default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)")
    return p.parse_args(argv)


def parse_top9(spec, width):
    """'conv5_x:7' -> ('conv5_x', 7), checked against the run's channels."""
    layer, _, channel = spec.partition(":")
    if layer not in STAGES or not channel.isdigit():
        raise ValueError(f"--top9 {spec}: expected LAYER:CHANNEL, LAYER one of {STAGES}")
    if int(channel) >= WIDTHS[layer] * width:
        raise ValueError(f"--top9 {spec}: {layer} has {WIDTHS[layer] * width} channels, no "
                         f"channel {channel}")
    return layer, int(channel)


def pick_image(spec, labels):
    """--image as an index into the test set, or the first test image of a class."""
    if spec.isdigit() and int(spec) < len(labels):
        return int(spec)
    if spec in cifar.CLASSES and (labels == cifar.CLASSES.index(spec)).any():
        return int(np.flatnonzero(labels == cifar.CLASSES.index(spec))[0])
    raise ValueError(f"--image {spec}: give a test image's index, 0 to {len(labels) - 1}, or "
                     f"the name of a class it holds ({', '.join(cifar.CLASSES)})")


# --- Drawing: shared helpers ------------------------------------------------------------------

def grid(tiles, cols, pad=1):
    """(N, h, w[, 3]) tiles -> one image of rows x cols tiles, NaN (drawn white) between them."""
    n, h, w = tiles.shape[:3]
    out = np.full((math.ceil(n / cols) * (h + pad) + pad, cols * (w + pad) + pad)
                  + tiles.shape[3:], np.nan)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = t
    return out


def filter_grid(weight):
    """conv1 weights (C, 3, k, k) -> RGB grid, each filter scaled alone, 0 mid-grey."""
    w = weight.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # (C, 3, k, k) -> (C, k, k, 3)
    scale = np.abs(w).reshape(len(w), -1).max(1).clip(min=1e-12)  # (C,)
    w = 0.5 + w / (2 * scale[:, None, None, None])  # [-max, max] -> [0, 1]
    return np.nan_to_num(grid(w, math.ceil(math.sqrt(len(w)))), nan=1.0)


def show(images):
    """Normalised (B, 3, H, W) tensor -> displayable (B, H, W, 3) in [0, 1], on the host."""
    mean, std = torch.tensor(cifar.MEAN).view(1, 3, 1, 1), torch.tensor(cifar.STD).view(1, 3, 1, 1)
    return (images.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def contrast(r):
    """Projections (B, 3, H, W) -> (B, H, W, 3) in [0, 1], each scaled to its own +-max, 0 grey."""
    r = r.float().cpu()
    r = 0.5 + r / (2 * r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12))
    return r.permute(0, 2, 3, 1).numpy()


def blank(maps):
    """How many maps of maps (C, h, w) are blank: all zero."""
    return int((maps.flatten(1).amax(1) == 0).sum())


def save(fig, path):
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def curves(runs, title):
    """Loss and accuracy against iterations, for runs [(label, history, marker)]: one colour a
    run, train dashed and test solid. Returns the figure and its two axes."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, history, marker), colour in zip(runs, colours * len(runs)):
        it = [h["iteration"] for h in history]
        for ax, key in zip(axes, ("loss", "acc")):
            ax.plot(it, [h[f"train_{key}"] for h in history], "--" + marker, color=colour,
                    ms=3, label=f"{label}train (no augmentation)")
            ax.plot(it, [h[f"test_{key}"] for h in history], "-" + marker, color=colour, ms=3,
                    label=f"{label}test")
    for ax, name in zip(axes, ("Cross-entropy loss", "Accuracy (%)")):
        ax.set(xlabel="iteration", title=name)
    fig.suptitle(title)
    return fig, axes


# --- The figures ----------------------------------------------------------------------------

def fig1_learning_curve(history, run, name, path):
    it = history[-1]["iteration"]
    done = "" if it == run["iters"] else f", evaluated to iteration {it:,} of {run['iters']:,}"
    fig, axes = curves([("", history, "o")], f"{name}, batch {run['batch']}{done}")
    for ax in axes:
        for d in (d for d in train.schedule(run["iters"], run["lr_drops"]) if d <= it):
            ax.axvline(d, color="red", ls="--", lw=1, label=f"lr / 10 at {d:,}")
    studys = [(i, a) for i, a in TEST_ACC.items() if i <= it]
    if studys:
        axes[1].plot(*zip(*studys), "k*", ms=10, label="study, test (its Table 1 columns)")
    for ax in axes:
        ax.legend(fontsize=8)
    save(fig, path)


def fig2_conv1_filters(model, path):
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(filter_grid(model.conv1[0].weight), interpolation="nearest")
    ax.set(title=f"The {model.conv1[0].out_channels} conv1 filters "
                 f"(3 x 3 RGB; grey = 0, each scaled alone)")
    ax.axis("off")
    save(fig, path)


def fig3_conv1_maps(x, feats, label, path):
    """The image and its conv1 maps, each scaled alone; returns how many maps are blank."""
    maps = feats["conv1"][0].float()  # (C, 32, 32)
    maps = (maps / maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]).cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].imshow(show(x)[0], interpolation="nearest")
    axes[0].set(title=f"input: {label}")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    axes[1].imshow(grid(maps, math.ceil(math.sqrt(len(maps)))), cmap=cmap, interpolation="nearest")
    axes[1].set(title=f"its {len(maps)} conv1 feature maps, {maps.shape[1]} x {maps.shape[2]} "
                      f"(each scaled alone); {blank(feats['conv1'][0])} blank (all zero, black)")
    for ax in axes:
        ax.axis("off")
    save(fig, path)
    return blank(feats["conv1"][0])


def fig4_conv5_maps(feats, label, path):
    """The conv5_x maps on one shared scale; returns how many are blank."""
    maps = feats["conv5_x"][0].float().cpu().numpy()  # (C, 4, 4)
    fig, ax = plt.subplots(figsize=(14, 8))
    ax.imshow(grid(maps / max(maps.max(), 1e-12), 2 * math.ceil(math.sqrt(len(maps) / 2))),
              cmap=plt.get_cmap("gray").with_extremes(bad="white"), vmin=0, vmax=1,
              interpolation="nearest")
    ax.set(title=f"conv5_x feature maps of the {label}: {len(maps)} maps of 4 x 4, one shared "
                 f"scale; {blank(feats['conv5_x'][0])} blank (all zero, black)")
    ax.axis("off")
    save(fig, path)
    return blank(feats["conv5_x"][0])


def fig5_deconvnet(model, x, feats, path):
    """Top: the study's Figure 5, the reconstructions from whole layers. Below: each of the
    most active channels alone, from its strongest activation."""
    layers = [(layer, guided) for guided in (False, True) for layer in ("conv1", "conv5_x")]
    rows = [[(show(x)[0], "input")] + [(contrast(project(model, x, layer, guided=g))[0],
                                        f"all of {layer}{', guided' if g else ''}")
                                       for layer, g in layers]]
    for layer, guided in (("conv1", False), ("conv5_x", False), ("conv5_x", True)):
        strength = feats[layer][0].flatten(1).amax(1)  # (C,) strongest activation per channel
        channels = strength.argsort(descending=True)[:TOP_CHANNELS].tolist()
        rows.append([(show(x)[0], "input")] + [
            (contrast(project(model, x, layer, c, keep="max", guided=guided))[0],
             f"{layer}{', guided' if guided else ''} ch {c}") for c in channels])
    fig, axes = plt.subplots(len(rows), TOP_CHANNELS + 1,
                             figsize=(2 * (TOP_CHANNELS + 1), 2.3 * len(rows)))
    for panels, row in zip(rows, axes):
        for ax, (image, title) in zip(row, panels):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        for ax in row:
            ax.axis("off")
    fig.suptitle("Row 1: reconstructions from a whole layer (the study's Figure 5). Below, one "
                 "channel at a time: each channel's strongest activation, most active first;\n"
                 "last row guided. Every panel is scaled to its own range (contrast-enhanced, "
                 "grey = 0)")
    save(fig, path)


def top9(model, test_x, test_y, layer, channel, path):
    """test_x: the uint8 test images on the model's device."""
    with torch.no_grad():  # per test image, the channel's strongest activation
        strength = torch.cat([model.features(cifar.normalize(x))[layer][:, channel].flatten(1)
                              .amax(1) for x in test_x.split(500)])  # (N,)
    idx = strength.argsort(descending=True)[:9]  # on the device, as test_x
    names = [cifar.CLASSES[test_y[i]] for i in idx.tolist()]
    print(f"top9 {layer}:{channel}: test images {idx.tolist()} ({', '.join(names)})")
    x = cifar.normalize(test_x[idx])  # (9, 3, 32, 32)
    recons = contrast(project(model, x, layer, channel, keep="max"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, images, title in ((axes[0], recons, "deconvnet projections (contrast-enhanced)"),
                              (axes[1], show(x), "the test images")):
        ax.imshow(np.nan_to_num(grid(images, 3), nan=1.0), interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"The 9 test images that most activate {layer} channel {channel}: "
                 f"{', '.join(names)}")
    save(fig, path)


def fig7_localize(model, test_x, test_y, index, path):
    """Rows: the --image on the trained network, the same on random weights, then the first
    test image of every other class. Columns: input, occlusion of the true class, occlusion of
    the strongest conv5_x channel, Grad-CAM over the image, guided projection from conv5_x.
    Returns the maps of the --image on the trained network."""
    others = [int(np.flatnonzero(test_y == c)[0]) for c in range(10)
              if c != test_y[index] and (test_y == c).any()]
    rows = [(model, index, "trained"), (deconvnet.reinitialised(model), index, "random weights")]
    rows += [(model, i, "trained") for i in others]
    titles = ["input", "P(true class), square over\neach place: 0 dark, 1 bright",
              "strongest conv5_x channel: its total\nwith the square there, as a share of\n"
              "its total without it: 0 dark, 1 bright",
              "Grad-CAM at conv5_x,\nshare of its max: 0 dark, 1 bright",
              "guided projection from\nall of conv5_x (grey = 0)"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows)), layout="constrained")
    first = None
    for (net, i, kind), row in zip(rows, axes):
        x = cifar.normalize(test_x[i:i + 1])
        m = deconvnet.maps(net, x, int(test_y[i]))
        first = first or m
        name = cifar.CLASSES[test_y[i]]
        row[0].imshow(show(x)[0], interpolation="nearest")
        row[0].set_ylabel(f"test image {i} ({name}),\n{kind}:\nP({name}) = {m['prob']:.2f}",
                          fontsize=8)
        row[1].imshow(m["occlusion"].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        row[1].set_xlabel(f"lowest {m['occlusion'].min():.2f}", fontsize=8)
        row[2].imshow(m["feature"].cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        row[2].set_xlabel(f"channel {m['channel']}", fontsize=8)
        row[3].imshow(show(x)[0].mean(2), cmap="gray", interpolation="nearest")
        cam = torch.nn.functional.interpolate(m["gradcam"][None, None], size=x.shape[-2:],
                                              mode="bilinear")[0, 0].cpu()  # for display
        row[3].imshow((cam / cam.max().clamp(min=1e-12)).numpy(), cmap="inferno", vmin=0, vmax=1,
                      alpha=0.6)
        row[4].imshow(contrast(m["guided"])[0], interpolation="nearest")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    fig.suptitle("Does the network look at the object? Occlusion (Zeiler & Fergus §4.2: 8 x 8 "
                 "grey square, stride 2), Grad-CAM, guided backpropagation;\nrow 2: the same "
                 "architecture with random weights (Adebayo et al. 2018)", fontsize=10)
    save(fig, path)
    return first


# --- The report: Table 1, the figures, and the study's claims with their verdicts ----------------

def report(ckpt, model, drawn, facts, path):
    """report.md, the study redone for this run; drawn: {file: (title, caption)} of its figures."""
    run = ckpt["args"]
    prov = {k: "not recorded" for k in ("device", "torch", "source")} | ckpt.get("provenance", {})
    hours = f"{prov['seconds'] / 3600:.2f} h" if "seconds" in prov else "not recorded"
    settings = ", ".join(f"{k} {run[k]}" for k in train.SETTINGS if k != "data" and k in run)
    lines = [f"# Reproduction report: {model.name}, at iteration {ckpt['iteration']:,}", "",
             "| Provenance | |", "|---|---|",
             f"| Network | {model.name}: {sum(p.numel() for p in model.parameters()):,} "
             f"parameters |", f"| Settings | {settings} |",
             f"| Data | {ckpt['data_fingerprint']} |", f"| Test images | {facts['images']} |",
             f"| Device | {prov['device']} |", f"| torch | {prov['torch']} |",
             f"| Training time, summed over resumes | {hours} |",
             f"| Source: sha256 of resnet18.py, cifar.py, train.py | {prov['source']} |", "",
             "## Table 1", "", train.table(ckpt["history"]), ""]
    for name, (title, words) in sorted(drawn.items()):
        lines += [f"## {title}", "", f"![{title}]({name})", "", words, ""]
    lines += ["## The study's claims, checked", "", "| Claim | This run | Verdict |",
              "|---|---|---|"] + [f"| {c} | {e} | {v} |" for c, e, v in claims(
                  ckpt["history"], run, facts.get("blank5"), facts.get("located"))]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def claims(history, run, blank=None, located=None):
    """The study's claims, each checked on this run: [(claim, evidence, verdict)], a verdict
    "holds", "does not hold", or "not measured: why" where the run cannot test the claim.
    blank: (blank maps, maps) of Figure 4's conv5_x; located: (lowest occluded P(class),
    P(class), the occlusion map's rho in the randomisation test) of Figure 7."""
    at = {h["iteration"]: h for h in history}
    studys = (run.get("depth", 18), run["width"], run.get("plain", False)) == (18, 64, False)
    drops = train.schedule(run["iters"], run["lr_drops"])
    after = [h for h in history if drops and h["iteration"] > drops[0]]
    return [accuracy_at(10000, at, studys), accuracy_at(ITERS, at, studys),
            jump_at_drop(history, after), late_rise(after), train_reaches_100(at),
            blank_conv5(blank), localised(located)]


def holds(true):
    return "holds" if true else "does not hold"


def accuracy_at(it, at, studys):
    claim = f"test accuracy {TEST_ACC[it]:.2f} % at {it:,} iterations (± {ACC_POINTS:g})"
    if it not in at:
        return claim, "-", f"not measured: the run has no evaluation at {it:,}"
    acc = f"{at[it]['test_acc']:.2f} %"
    if not studys:
        return claim, acc, "not measured: the network is not the study's ResNet-18 at width 64"
    return claim, acc, holds(abs(at[it]["test_acc"] - TEST_ACC[it]) <= ACC_POINTS)


def jump_at_drop(history, after):
    claim = f"test accuracy jumps at the drop (by {JUMP[0]:g} points or more)"
    before = [h for h in history if after and h["iteration"] < after[0]["iteration"]]
    if not before or after[0]["iteration"] - before[-1]["iteration"] > JUMP[1]:
        return claim, "-", "not measured: the run has no evaluations either side of a drop"
    a, b = before[-1], after[0]
    return claim, f"{a['test_acc']:.2f} % at {a['iteration']:,}, {b['test_acc']:.2f} % at " \
                  f"{b['iteration']:,}", holds(b["test_acc"] - a["test_acc"] >= JUMP[0])


def late_rise(after):
    claim = f"the test loss rises late (the last at least {RISE:.0%} above its lowest after " \
            f"the drop)"
    if len(after) < 3:
        return claim, "-", "not measured: fewer than three evaluations after a drop"
    low, last = min(after, key=lambda h: h["test_loss"]), after[-1]
    return claim, f"lowest {low['test_loss']:.4f} at {low['iteration']:,}, last " \
                  f"{last['test_loss']:.4f} at {last['iteration']:,}", \
        holds(last["test_loss"] >= (1 + RISE) * low["test_loss"])


def train_reaches_100(at):
    claim = f"train accuracy reaches 100 % (at least {TRAIN_ALL} %)"
    done = max(at, default=0)
    if done < ITERS:
        return claim, "-", f"not measured: the run is shorter ({done:,} of {ITERS:,} iterations)"
    return claim, f"{at[done]['train_acc']:.2f} % at {done:,}", \
        holds(at[done]["train_acc"] >= TRAIN_ALL)


def blank_conv5(blank):
    claim = f"many conv5 maps are blank (at least {BLANK_SHARE:.0%})"
    if blank is None:
        return claim, "-", "not measured: no test image, so no Figure 4"
    return claim, f"{blank[0]} of {blank[1]}", holds(blank[0] >= BLANK_SHARE * blank[1])


def localised(located):
    claim = f"conv5 localises the object (occlusion takes P(class) below {OCCLUDED:g} of " \
            f"itself, and its map passes the randomisation test: rho below {RHO:g})"
    if located is None:
        return claim, "-", "not measured: the randomisation test was not asked for (--sanity N)"
    lowest, prob, rho = located
    return claim, f"P {prob:.2f}, lowest {lowest:.2f}; rho {rho:.2f}", \
        holds(lowest < OCCLUDED * prob and rho < RHO)


# --- What to draw ------------------------------------------------------------------------------

def test_images(args, ckpt):
    """(folder, test images uint8, labels) for Figures 3-5 and 7, checked before any figure is
    written; (None, None, None) where there are none."""
    data = args.data or ckpt["args"]["data"]  # else the run's own folder, if still there
    try:
        test_x, test_y = cifar.load_cifar10(data, train=False)
    except FileNotFoundError:
        if args.data:
            raise
        return None, None, None
    if ckpt.get("test_fingerprint", "") not in ("", cifar.fingerprint(test_x, test_y)):
        wrong = f"the test images in {data} are not the ones {args.ckpt} was evaluated on"
        if args.data is None:
            raise ValueError(f"{wrong}: pass --data with the run's CIFAR-10 folder")
        print(f"warning: {wrong}; the figures show these images", file=sys.stderr)
        data = f"{data} (not the ones the run was evaluated on)"
    print(f"test images from {data}" + ("" if args.data else ", the run's --data"))
    return data, torch.as_tensor(test_x), test_y


def image_figures(model, args, test_x, test_y, spec, out, drawn):
    """Figures 3-5 and 7, --top9 and --sanity for the --image (test_x on the model's device);
    adds to `drawn`, returns what the claims need."""
    want, index = set(args.figures), pick_image(args.image, test_y)
    x = cifar.normalize(test_x[index:index + 1])  # (1, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        prob = model(x).softmax(1)[0, test_y[index]].item()
    name = cifar.CLASSES[test_y[index]]
    label, facts = f"test image {index} ({name})", {}
    image = f"{label}, P({name}) = {prob:.2f}"
    if 3 in want:
        n = fig3_conv1_maps(x, feats, label, out / FIGURES[2])
        drawn[FIGURES[2]] = TITLES[2], f"{image}: {n} of its {model.width} conv1 maps blank"
    if 4 in want:
        n, maps = fig4_conv5_maps(feats, label, out / FIGURES[3]), 8 * model.width
        facts["blank5"] = n, maps
        drawn[FIGURES[3]] = TITLES[3], f"{image}: {n} of its {maps} conv5_x maps blank"
    if 5 in want:
        fig5_deconvnet(model, x, feats, out / FIGURES[4])
        drawn[FIGURES[4]] = TITLES[4], image
    if spec:
        top = f"top9_{spec[0]}_{spec[1]}.png"
        top9(model, test_x, test_y, *spec, out / top)
        drawn[top] = f"Top 9 of {spec[0]}:{spec[1]}", "Zeiler & Fergus"
    if 7 in want:
        lowest = fig7_localize(model, test_x, test_y, index, out / FIGURES[6])["occlusion"].min()
        drawn[FIGURES[6]] = TITLES[6], f"{image}; occluded, {lowest:.2f} at the lowest"
    if args.sanity:
        picks = [i for c in range(10) for i in np.flatnonzero(test_y == c)[:args.sanity]]
        rho = deconvnet.sanity(model, cifar.normalize(test_x[picks]), test_y[picks])
        table = "\n".join(
            [f"The randomisation test: Spearman's rho between each map on the trained network "
             f"and on random weights, over {len(picks)} test images (the first {args.sanity} "
             f"of each class).", "", "| Map | rho, mean ± std | images with a constant map "
             "(rho undefined) |", "|---|---:|---:|"]
            + [f"| {k} | {m:.2f} ± {s:.2f} | {n} |" for k, (m, s, n) in rho.items()])
        print(table)
        if 7 in want:
            drawn[FIGURES[6]] = TITLES[6], drawn[FIGURES[6]][1] + "\n\n" + table
            facts["located"] = (lowest.item(), prob, rho["occlusion"][0])
    return facts


def main(argv=None):
    args = get_args(argv)
    paths = [Path(args.ckpt), *map(Path, args.compare)]
    (ckpt, model), *others = [train.load(p) for p in paths]
    run, history, want = ckpt["args"], ckpt["history"], set(args.figures)
    spec = args.top9 and parse_top9(args.top9, model.width)
    args.data, test_x, test_y = test_images(args, ckpt)
    none = f"Figures 3-5 and 7, --top9 and --sanity need test images, and the run's data " \
           f"folder ({run['data']}) has none: pass --data with the CIFAR-10 folder"
    if args.data is not None:
        pick_image(args.image, test_y)  # a bad --image fails before any figure
    elif want <= {3, 4, 5, 7} or spec or args.sanity:
        raise ValueError(none)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(args.device, memory_format=torch.channels_last)
    print(f"{args.ckpt}: {model.name} at iteration {ckpt['iteration']:,}")
    print(f"Table 1 of this run, beside the study's:\n{train.table(history)}")
    drawn, facts = {}, {"images": args.data or "none"}  # for the report
    if history and 1 in want:
        fig1_learning_curve(history, run, model.name, out / FIGURES[0])
        jump, rise = claims(history, run)[2:4]  # their evidence, in words
        drawn[FIGURES[0]] = TITLES[0], f"Around the drop: {jump[1]}; after it: {rise[1]}"
    if 2 in want:
        fig2_conv1_filters(model, out / FIGURES[1])
        drawn[FIGURES[1]] = TITLES[1], f"{model.width} filters of 3 x 3, each scaled alone"
    if args.compare and 6 in want:
        runs = [(ckpt, model), *others]
        names = [f"{m.name} ({p.name})" for p, (_, m) in zip(paths, runs)]
        fig, axes = curves([(f"{n}, ", c["history"], "") for n, (c, _) in zip(names, runs)],
                           "Learning curves: train (no augmentation) dashed, test solid")
        for ax in axes:
            ax.legend(fontsize=7)
        save(fig, out / FIGURES[5])
        drawn[FIGURES[5]] = TITLES[5], ", ".join(names)
    if args.data is None:
        print(none)
    else:
        facts.update(image_figures(model, args, test_x.to(args.device), test_y, spec, out, drawn))
    report(ckpt, model, drawn, facts, out / "report.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:  # a bad checkpoint, no test images, a bad --image
        sys.exit(f"error: {e}")

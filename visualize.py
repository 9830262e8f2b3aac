"""The study's Figures 1-5 from a checkpoint of train.py: learning curves, conv1 filters, conv1
and conv5_x maps of a test image, deconvnet reconstructions (Zeiler & Fergus 2014); then what the
study does not have, named for what it shows: the runs compared (`--compare`), whether the
network looks at the object (occlusion, Grad-CAM, the randomisation test of Adebayo et al. 2018),
`--top9` (Zeiler & Fergus Fig. 2). report.md redoes the study for the run: Table 1, each figure
with a caption from its numbers, each claim with a verdict by the rules below. The figures of a
test image need test images: --data, else the run's own.

    python visualize.py --ckpt run.pt                    # writes figures/*.png, report.md
    python visualize.py --ckpt run.pt --image ship --top9 conv5_x:7 --sanity 10 --out figures
    python visualize.py --ckpt run.pt --compare plain.pt # adds runs_compared.png
"""
import argparse
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import cifar
import deconvnet
import train
from resnet18 import MULTIPLIERS, STAGES

matplotlib.use("Agg")  # files only, no window (honoured until the first figure)
DPI = 100  # pixels per inch of the figures
FIGURES = {  # --figures KEY: (file, title, whether it needs test images)
    1: ("fig1_learning_curve.png", "Figure 1: learning curves", False),
    2: ("fig2_conv1_filters.png", "Figure 2: conv1 filters", False),
    3: ("fig3_conv1_maps.png", "Figure 3: conv1 feature maps", True),
    4: ("fig4_conv5_maps.png", "Figure 4: conv5 feature maps", True),
    5: ("fig5_deconvnet.png", "Figure 5: deconvnet reconstructions", True),
    "compare": ("runs_compared.png", "Beyond the study: the runs compared", False),
    "localize": ("localize.png", "Beyond the study: does the network look at the object?", True),
}
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
    p.add_argument("--image", default="0", help="index or class of the test image (default 0)")
    p.add_argument("--out", default="figures", help="folder to write to (default figures)")
    p.add_argument("--top9", metavar="LAYER:CHANNEL", help="the 9 test images that most "
                   "activate a channel, e.g. conv5_x:7")
    p.add_argument("--compare", nargs="+", metavar="CKPT", default=[],
                   help="runs to draw beside this one (the figure `compare`)")
    p.add_argument("--figures", type=figure_key, nargs="+", metavar="KEY", default=list(FIGURES),
                   help="figures to draw: the study's 1 to 5, and by name compare (with "
                        "--compare) and localize (default all)")
    p.add_argument("--sanity", type=train.at_least(0), default=0, metavar="N", help="the "
                   "randomisation test on the first N test images of each class (default 0: none)")
    p.add_argument("--device", type=train.parse_device, default="auto",
                   help="cpu or cuda[:N] (default auto: the GPU if there is one)")
    return p.parse_args(argv)


def figure_key(text):
    """An argparse type: one of the study's figures by its number, or another by its name."""
    key = int(text) if text.isdigit() else text
    if key not in FIGURES:
        raise argparse.ArgumentTypeError(f"{text}: not one of {', '.join(map(str, FIGURES))}")
    return key


def parse_top9(spec, width):
    """'conv5_x:7' -> ('conv5_x', 7), a channel of the run's network."""
    layer, _, channel = spec.partition(":")
    channels = {s: MULTIPLIERS[s] * width for s in STAGES}
    if layer not in STAGES or not channel.isdigit() or int(channel) >= channels[layer]:
        raise ValueError(f"--top9 {spec}: expected LAYER:CHANNEL, with LAYER one of {STAGES} "
                         f"and CHANNEL below its channels, {list(channels.values())}")
    return layer, int(channel)


def pick_image(spec, labels):
    """--image as an index into the test set, or the first test image of a class."""
    if spec.isdigit() and int(spec) < len(labels):
        return int(spec)
    if spec in cifar.CLASSES and (labels == cifar.CLASSES.index(spec)).any():
        return int(np.flatnonzero(labels == cifar.CLASSES.index(spec))[0])
    raise ValueError(f"--image {spec}: give a test image's index, 0 to {len(labels) - 1}, or "
                     f"the name of a class it holds ({', '.join(cifar.CLASSES)})")


def grid(tiles, cols):
    """(N, h, w[, 3]) tiles -> one image of rows x cols tiles, a NaN (white) line before each."""
    n, h, w, rows = *tiles.shape[:3], math.ceil(len(tiles) / cols)
    out = np.full((rows * cols, h + 1, w + 1) + tiles.shape[3:], np.nan)
    out[:n, 1:, 1:] = tiles
    out = out.reshape(rows, cols, h + 1, w + 1, *tiles.shape[3:]).swapaxes(1, 2)
    return out.reshape(rows * (h + 1), cols * (w + 1), *tiles.shape[3:])


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
    r = r.float().cpu().permute(0, 2, 3, 1)
    return (0.5 + r / (2 * r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12))).numpy()


def save(fig, path):
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def curves(runs, title, drops, path):
    """Loss and accuracy against iterations of runs [(label, history, marker)], the study's test
    accuracy at its Table 1 columns, and a line at each drop."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, history, marker), colour in zip(runs, colours * len(runs)):
        it = [h["iteration"] for h in history]
        for ax, key in zip(axes, ("loss", "acc")):
            ax.plot(it, [h[f"train_{key}"] for h in history], "--" + marker, color=colour,
                    ms=3, label=f"{label}train (no augmentation)")
            ax.plot(it, [h[f"test_{key}"] for h in history], "-" + marker, color=colour, ms=3,
                    label=f"{label}test")
    last = max(h["iteration"] for _, history, _ in runs for h in history)
    study = [(i, a) for i, a in train.TEST_ACC.items() if i <= last]
    if study:
        axes[1].plot(*zip(*study), "k*", ms=10, label="study, test (its Table 1 columns)")
    for ax, name in zip(axes, ("Cross-entropy loss", "Accuracy (%)")):
        for d in (d for d in drops if d <= last):
            ax.axvline(d, color="red", ls="--", lw=1, label=f"lr / 10 at {d:,}")
        ax.set(xlabel="iteration", title=name)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save(fig, path)


def learning_curves(history, run, name, path):
    """The study's Figure 1; returns its caption."""
    curves([("", history, "o")], f"{name}, batch {run['batch']}, evaluated to iteration "
                                 f"{history[-1]['iteration']:,} of {run['iters']:,}",
           train.schedule(run["iters"], run["lr_drops"]), path)
    return f"Test accuracy around the drop: {jump(history, run)[1]}; test loss after it: " \
           f"{late_rise(history, run)[1]}."


def runs_compared(paths, runs, path):
    """This run beside the --compare runs, [(checkpoint, network)]; returns the caption."""
    names = [f"{m.name}, lr {c['args']['lr']:g} ({p.name})" for p, (c, m) in zip(paths, runs)]
    run = runs[0][0]["args"]  # the drops drawn: this run's
    drops = train.schedule(run["iters"], run["lr_drops"])
    curves([(f"{n}, ", c["history"], "") for n, (c, _) in zip(names, runs)],
           "Learning curves: train (no augmentation) dashed, test solid", drops, path)
    return f"The learning curves of {', '.join(names)}, with the study's test accuracy."


def conv1_filters(model, path):
    """The study's Figure 2; returns its caption."""
    panels([[(filter_grid(model.conv1[0].weight), "")]], f"The {model.width} conv1 filters "
           f"(3 x 3 RGB; grey = 0)", path, size=6)
    return f"The {model.width} conv1 filters, 3 x 3 RGB each, each scaled to its own largest " \
           f"weight; grey is 0."


def feature_maps(x, maps, image, layer, path):
    """The study's Figures 3 and 4: the image and its maps (C, h, w) of `layer`, each scaled
    alone; returns the caption."""
    peak = maps.flatten(1).amax(1)  # (C,) each map's largest value
    blank = int((peak == 0).sum())  # maps that are zero everywhere
    scaled = (maps / peak.clamp(min=1e-12)[:, None, None]).cpu()
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].imshow(show(x)[0], interpolation="nearest")
    axes[0].set(title=f"input: {image}")
    axes[1].imshow(grid(scaled.float().numpy(), math.ceil(math.sqrt(len(maps)))),
                   cmap=plt.get_cmap("gray").with_extremes(bad="white"), interpolation="nearest")
    axes[1].set(title=f"its {len(maps)} {layer} feature maps, {maps.shape[1]} x {maps.shape[2]} "
                      f"(each scaled alone); {blank} blank (all zero, black)")
    for ax in axes:
        ax.axis("off")
    save(fig, path)
    return f"{blank} of the {len(maps)} {layer} maps of {image} are blank (zero everywhere)."


def panels(rows, title, path, size=2):
    """A figure of rows of (image, caption) panels, each `size` inches wide."""
    cols = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(size * cols, (size + 0.3) * len(rows)),
                             squeeze=False)
    for row, ax_row in zip(rows, axes):
        for ax, (image, caption) in zip(ax_row, row):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(caption, fontsize=9)
        for ax in ax_row:
            ax.axis("off")
    fig.suptitle(title)
    save(fig, path)


def deconvnet_figure(model, x, feats, image, path):
    """The study's Figure 5, from whole layers; below, the most active channels one by one.
    Returns its caption."""
    picture, layers = show(x)[0], (("conv1", False), ("conv5_x", False), ("conv5_x", True))
    rows = [[(picture, "the image")] + [(contrast(deconvnet.project(model, x, layer, guided=g))[0],
                                         f"all of {layer}{', guided' if g else ''}")
                                        for layer, g in layers]]
    for layer, guided in layers:
        strength = feats[layer][0].flatten(1).amax(1)  # (C,) strongest activation per channel
        channels = strength.argsort(descending=True)[:8].tolist()  # the 8 most active
        r = [deconvnet.project(model, x, layer, c, keep="max", guided=guided)[0] for c in channels]
        fields = [deconvnet.receptive_field(p) for p in r]  # a conv1 activation sees 3 x 3
        if layer == "conv1":
            rows.append([(picture[f], f"conv1 ch {c} sees") for c, f in zip(channels, fields)])
        rows.append([(contrast(p[None])[0][f], f"{layer}{', guided' if guided else ''} ch {c}")
                     for p, f, c in zip(r, fields, channels)])
    panels(rows, "Row 1: from a whole layer (the study's Figure 5); all of conv1, guided, is the "
           "same picture (the seed is conv1's own rectified output). Below: a channel at a time,\n"
           "from its strongest activation: the part of the image it sees, its projection; each "
           "panel enlarged and scaled alone, grey = 0", path)
    return f"The deconvnet reconstructions of {image}."


def top9(model, test_x, test_y, layer, channel, path):
    """Zeiler & Fergus' Figure 2 for one channel; returns its caption. test_x: the uint8 test
    images on the model's device."""
    with torch.no_grad():  # per test image, the channel's strongest activation
        strength = torch.cat([model.features(cifar.normalize(x))[layer][:, channel].flatten(1)
                              .amax(1) for x in test_x.split(500)])  # (N,)
    idx = strength.argsort(descending=True)[:9]  # on the device, as test_x
    x = cifar.normalize(test_x[idx])  # (9, 3, 32, 32)
    r = deconvnet.project(model, x, layer, channel, keep="max", guided=True)  # (9, 3, 32, 32)
    fields = [deconvnet.receptive_field(p) for p in r]
    panels([[(im, f"{i} ({cifar.CLASSES[test_y[i]]})") for im, i in zip(show(x), idx.tolist())],
            [(im[f], "the part it sees") for im, f in zip(show(x), fields)],
            [(p[f], "guided projection") for p, f in zip(contrast(r), fields)]],
           f"The 9 test images that most activate {layer} channel {channel}. Their plain deconvnet "
           f"projections would be one picture: with no max-pooling switches, it depends only on\n"
           f"where the activation is and its strength; guided, each keeps its image's ReLU masks "
           f"(contrast-enhanced, grey = 0)", path)
    return "The nine test images that most activate it, the part of each that its strongest " \
           "activation sees, and each one's guided projection (Zeiler & Fergus Figure 2)."


def localize(model, test_x, test_y, index, image, path):
    """Rows: the --image, the same on random weights, the first test image of three other
    classes. Columns: the image, occlusion of its class, Grad-CAM, the guided projection.
    Returns its caption."""
    image_class = cifar.CLASSES[test_y[index]]
    others = [int(np.flatnonzero(test_y == c)[0]) for c in range(10)
              if c != test_y[index] and (test_y == c).any()]
    rows = [(model, index, "trained"), (deconvnet.reinitialised(model), index, "random weights")]
    rows += [(model, i, "trained") for i in others[:3]]
    titles = ["the image", "P(its class) with an 8 x 8\ngrey square there", "Grad-CAM at conv5_x,"
              "\nas a share of its largest", "guided projection from\nall of conv5_x (grey 0)"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.3 * len(rows)), layout="constrained")
    lowest = []
    for (net, i, kind), row in zip(rows, axes):
        x = cifar.normalize(test_x[i:i + 1])
        m = deconvnet.maps(net, x, int(test_y[i]))
        lowest.append(m["occlusion"].min().item())
        cam = F.interpolate(m["gradcam"][None, None], size=(32, 32), mode="bilinear")[0, 0]
        shown = [show(x)[0], m["occlusion"], cam / cam.max().clamp(min=1e-12),
                 contrast(m["guided"])[0]]
        for ax, panel in zip(row, shown):  # the two maps share one scale: 0 to 1
            bar = ax.imshow(torch.as_tensor(panel).cpu().numpy(), vmin=0, vmax=1)
            ax.set(xticks=[], yticks=[])
        name = cifar.CLASSES[test_y[i]]
        row[0].set_ylabel(f"test image {i} ({name}),\n{kind}:\nP({name}) = {m['prob']:.2f}",
                          fontsize=8)
        row[1].set_xlabel(f"lowest {lowest[-1]:.2f}", fontsize=8)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    fig.colorbar(bar, ax=axes[:, 1:3], shrink=0.5, label="columns 2 and 3: 0 (dark) to 1")
    fig.suptitle("Does the network look at the object? Occlusion (Zeiler & Fergus §4.2), "
                 "Grad-CAM, guided projection;\nrow 2: random weights (Adebayo et al. 2018)")
    save(fig, path)
    return f"For {image}, an 8 x 8 grey square over the image lowers P({image_class}) to " \
           f"{lowest[0]:.2f} at the lowest."


def report(ckpt, model, sections, facts, path):
    """report.md, the study redone for this run; sections: [(title, file, caption)]."""
    run = ckpt["args"]
    prov = {k: "not recorded" for k in ("device", "torch", "source")} | ckpt.get("provenance", {})
    hours = f"{prov['seconds'] / 3600:.2f} h" if "seconds" in prov else "not recorded"
    settings = ", ".join(f"{k} {run[k]}" for k in train.SETTINGS if k != "data" and k in run)
    lines = [f"# Reproduction report: {model.name}, at iteration {ckpt['iteration']:,}", "",
             "| Provenance | |", "|---|---|",
             f"| Network | {model.name}: {sum(p.numel() for p in model.parameters()):,} "
             f"parameters |", f"| Settings | {settings} |",
             f"| Data | {ckpt['data_fingerprint']} |", f"| Test images | {facts['images']} |",
             f"| Device, torch | {prov['device']}, torch {prov['torch']} |",
             f"| Training time, summed over resumes | {hours} |",
             f"| Source: sha256 of resnet18.py, cifar.py, train.py | {prov['source']} |", "",
             "## Table 1", "", train.table(ckpt["history"]), "", studys_train_measure(ckpt), ""]
    for title, file, caption in sections:
        lines += [f"## {title}", "", f"![{title}]({file})", "", caption, ""]
    lines += ["## The study's claims, checked", "", "*Not measured*: this run cannot test the "
              "claim (the reason follows); *does not hold*: it was tested, and failed.", "",
              "| Claim | This run | Verdict |", "|---|---|---|"]
    lines += [f"| {c} | {e} | {verdict(v)} |" for c, e, v in claims(
        ckpt["history"], run, facts.get("blank"), facts.get("located"))]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def studys_train_measure(ckpt):
    """The train rows of this run's Table 1 beside the study's, in words."""
    last = ckpt["history"][-1] if ckpt["history"] else {}
    lacks = "" if "step_acc" in last else " (this run was made before it was recorded)"
    return (f"The study's train values are multiples of 1/128 (82.03 % = 105/128, 87.50 % = "
            f"112/128, 92.97 % = 119/128, 100 % = 128/128): the accuracy of "
            f"{train.STUDY_TRAIN_IMAGES} training images, most likely the last batches before each "
            f"evaluation, augmented, in training mode; its test values are of 10,000 images. This "
            f"run's train rows are of {last.get('train_images', 0):,} images at the last column, "
            f"without augmentation, in eval mode; the row of the study's measure is the training "
            f"steps' own accuracy on the last {train.STUDY_TRAIN_IMAGES} images{lacks}.")


# The study's claims, one function each: (claim, evidence, True, False, or why the run cannot
# test it).

def accuracy(history, run, it):
    claim = f"test accuracy {train.TEST_ACC[it]:.2f} % at {it:,} iterations (± {ACC_POINTS:g})"
    row = next((h for h in history if h["iteration"] == it), None)
    if row is None:
        return claim, "-", f"the run has no evaluation at {it:,}"
    if (run.get("depth", 18), run["width"], run.get("plain", False)) != (18, 64, False):
        return claim, f"{row['test_acc']:.2f} %", "the network is not the study's ResNet-18 at " \
                                                   "width 64"
    return claim, f"{row['test_acc']:.2f} %", abs(row["test_acc"] - train.TEST_ACC[it]) <= \
        ACC_POINTS


def after_drop(history, run):
    """The evaluations after the first drop of the learning rate."""
    drops = train.schedule(run["iters"], run["lr_drops"])
    return [h for h in history if drops and h["iteration"] > drops[0]]


def jump(history, run):
    claim = f"test accuracy jumps at the drop (by {JUMP[0]:g} points or more)"
    after = after_drop(history, run)
    before = [h for h in history if after and h["iteration"] < after[0]["iteration"]]
    if not before or after[0]["iteration"] - before[-1]["iteration"] > JUMP[1]:
        return claim, "-", "the run has no evaluations either side of a drop"
    a, b = before[-1], after[0]
    return claim, f"{a['test_acc']:.2f} % at {a['iteration']:,}, {b['test_acc']:.2f} % at " \
                  f"{b['iteration']:,}", b["test_acc"] - a["test_acc"] >= JUMP[0]


def late_rise(history, run):
    claim = f"the test loss rises late (the last at least {RISE:.0%} above its lowest after it)"
    after = after_drop(history, run)
    if len(after) < 3:
        return claim, "-", "fewer than three evaluations after a drop"
    low, last = min(after, key=lambda h: h["test_loss"]), after[-1]
    return claim, f"lowest {low['test_loss']:.4f} at {low['iteration']:,}, last " \
                  f"{last['test_loss']:.4f} at {last['iteration']:,}", \
        last["test_loss"] >= (1 + RISE) * low["test_loss"]


def train_all(history, key, on):
    """Train accuracy reaches 100 % at the end, measured as `key` of the history."""
    claim = f"train accuracy reaches 100 % (at least {TRAIN_ALL} %), on {on}"
    last = history[-1] if history else {"iteration": 0}
    if last["iteration"] < train.ITERS:
        return claim, "-", f"the run is shorter ({last['iteration']:,} of {train.ITERS:,} " \
                           f"iterations)"
    if key not in last:
        return claim, "-", "the run was made before this measure was recorded"
    return claim, f"{last[key]:.2f} % at {last['iteration']:,}", last[key] >= TRAIN_ALL


def blank_maps(blank):
    """Many conv5 maps are blank; blank: (blank maps, maps) of conv5_x for the --image."""
    claim = f"many conv5 maps are blank (at least {BLANK_SHARE:.0%})"
    if blank is None:
        return claim, "-", "no test image, so no Figure 4"
    return claim, f"{blank[0]} of {blank[1]}", blank[0] >= BLANK_SHARE * blank[1]


def localised(located):
    """conv5 localises the object; located: (lowest occluded P(class), P(class), the occlusion
    map's rho in the randomisation test)."""
    claim = f"conv5 localises the object (occlusion takes P(class) below {OCCLUDED:g} of " \
            f"itself, and its map passes the randomisation test: rho below {RHO:g})"
    if located is None:
        return claim, "-", "the randomisation test was not asked for (--sanity N)"
    lowest, prob, rho = located
    return claim, f"P {prob:.2f}, lowest {lowest:.2f}; rho {rho:.2f}", \
        lowest < OCCLUDED * prob and rho < RHO


def claims(history, run, blank=None, located=None):
    """The study's claims checked on this run, in its order."""
    study = f"the last {train.STUDY_TRAIN_IMAGES} training images, the study's measure"
    return [accuracy(history, run, 10000), accuracy(history, run, train.ITERS),
            jump(history, run), late_rise(history, run),
            train_all(history, "train_acc", "all training images, no augmentation"),
            train_all(history, "step_acc", study), blank_maps(blank), localised(located)]


def verdict(value):
    """A claim's verdict in words: True, False, or the reason the run cannot test it."""
    if isinstance(value, str):
        return f"not measured: {value}"
    return "holds" if value else "does not hold"


def test_images(args, ckpt):
    """(folder, test images uint8, labels) for the figures of a test image; (None, None, None)
    if there are none."""
    data = args.data or ckpt["args"]["data"]  # else the run's own folder, if still there
    if not args.data and not (cifar.find_folder(data) / cifar.TEST_FILES[0]).exists():
        return None, None, None
    test_x, test_y = cifar.load_cifar10(data, train=False)
    print(f"test images from {data}" + ("" if args.data else ", the run's --data"))
    if ckpt.get("test_fingerprint", "") not in ("", cifar.fingerprint(test_x, test_y)):
        print(f"warning: the test images in {data} are not the ones {args.ckpt} was evaluated "
              f"on; the figures show these images", file=sys.stderr)
        data = f"{data} (not the ones the run was evaluated on)"
    return data, torch.as_tensor(test_x), test_y


def image_figures(model, args, test_x, test_y, out):
    """The figures of the --image, --top9 and --sanity: ({figure: caption}, what the claims
    need). test_x: the uint8 test images, on the model's device."""
    want, index = set(args.figures), args.image
    x = cifar.normalize(test_x[index:index + 1])  # (1, 3, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        prob = model(x).softmax(1)[0, test_y[index]].item()
    image = f"test image {index} ({cifar.CLASSES[test_y[index]]}, P = {prob:.2f})"
    peak = feats["conv5_x"][0].flatten(1).amax(1)  # (C,) each conv5_x map's largest value
    captions, facts = {}, {"blank": (int((peak == 0).sum()), len(peak))}
    for k, layer in ((3, "conv1"), (4, "conv5_x")):
        if k in want:
            captions[k] = feature_maps(x, feats[layer][0], image, layer, out / FIGURES[k][0])
    if 5 in want:
        captions[5] = deconvnet_figure(model, x, feats, image, out / FIGURES[5][0])
    if "localize" in want:
        captions["localize"] = localize(model, test_x, test_y, index, image,
                                        out / FIGURES["localize"][0])
    if args.top9:
        captions["top9"] = top9(model, test_x, test_y, *args.top9,
                                out / "top9_{}_{}.png".format(*args.top9))
    if args.sanity:
        table, rho = randomisation_test(model, test_x, test_y, args.sanity)
        lowest = deconvnet.occlusion(model, x, int(test_y[index])).min().item()
        facts["located"] = (lowest, prob, rho)
        if "localize" in want:
            captions["localize"] += "\n\n" + table
    return captions, facts


def randomisation_test(model, test_x, test_y, per_class):
    """Adebayo et al.'s test on the first `per_class` test images of each class, printed: (its
    table, the occlusion map's mean rho)."""
    picks = [i for c in range(10) for i in np.flatnonzero(test_y == c)[:per_class]]
    rho = deconvnet.sanity(model, cifar.normalize(test_x[picks]), test_y[picks])
    table = "\n".join([f"The randomisation test: Spearman's rho between each map on the trained "
                       f"network and on random weights, over {len(picks)} test images (the first "
                       f"{per_class} of each class).", "",
                       "| Map | rho, mean ± std | images with a constant map (no rho) |",
                       "|---|---:|---:|"] + [f"| {k} | {m:.2f} ± {s:.2f} | {n} |"
                                             for k, (m, s, n) in rho.items()])
    print(table)
    return table, rho["occlusion"][0]


def main(argv=None):
    args = get_args(argv)
    paths = [Path(args.ckpt), *map(Path, args.compare)]
    runs = [train.load(p) for p in paths]  # [(checkpoint, network)]
    (ckpt, model), run, want = runs[0], runs[0][0]["args"], set(args.figures)
    args.data, test_x, test_y = test_images(args, ckpt)
    if args.data is None and (any(FIGURES[k][2] for k in want) or args.top9 or args.sanity):
        raise ValueError(f"the figures of a test image, --top9 and --sanity need test images, "
                         f"and the run's folder {run['data']} has none: pass --data, or "
                         f"--figures 1 2 compare")
    if args.top9:  # the flags, checked against the run before any figure
        args.top9 = parse_top9(args.top9, model.width)
    if args.data is not None:
        args.image = pick_image(args.image, test_y)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(args.device, memory_format=torch.channels_last)
    print(f"Table 1 of this run, beside the study's:\n{train.table(ckpt['history'])}")
    captions, facts = {}, {}
    if ckpt["history"] and 1 in want:
        captions[1] = learning_curves(ckpt["history"], run, model.name, out / FIGURES[1][0])
    if 2 in want:
        captions[2] = conv1_filters(model, out / FIGURES[2][0])
    if args.compare and "compare" in want:
        captions["compare"] = runs_compared(paths, runs, out / FIGURES["compare"][0])
    if args.data is not None:
        more, facts = image_figures(model, args, test_x.to(args.device), test_y, out)
        captions.update(more)
    sections = [(title, file, captions[k]) for k, (file, title, _) in FIGURES.items()
                if k in captions]
    if args.top9:
        sections.append(("The top 9 of {} channel {}".format(*args.top9),
                         "top9_{}_{}.png".format(*args.top9), captions["top9"]))
    report(ckpt, model, sections, {"images": args.data or "none", **facts}, out / "report.md")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:  # a bad checkpoint, no test images, a bad --image
        sys.exit(f"error: {e}")

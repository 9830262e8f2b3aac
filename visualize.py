"""The study's Figures 1-5 and Table 1, from a checkpoint written by train.py; Figure 6
compares runs. For a run of --width w (the paper's 64):

    fig1_learning_curve.png   train and test loss and accuracy against iterations
    fig2_conv1_filters.png    the w conv1 filters (RGB, 3 x 3)
    fig3_conv1_maps.png       a test image and its w conv1 feature maps (32 x 32)
    fig4_conv5_maps.png       its 8w conv5_x feature maps (4 x 4), blank ones counted
    fig5_deconvnet.png        deconvnet reconstructions (Zeiler & Fergus 2014): from all of
                              conv1 and of conv5_x, as the study draws them, then channel by channel
    fig6_compare.png          with --compare: the learning curves of several runs on shared axes
    fig7_localize.png         does the network look at the object? Occlusion (Zeiler & Fergus
                              §4.2), Grad-CAM and the guided projection, for the --image and the
                              first test image of every other class, and the image again with
                              random weights (the sanity check of Adebayo et al. 2018)

Figures 3-5 and 7 need a test image: from --data, or else from the data folder the run was trained
on; without either, only Figures 1-2 are drawn. `--top9 conv5_x:7` also draws the nine test
images that most activate a channel beside their projections (Zeiler & Fergus, Fig. 2).

    python visualize.py --ckpt run.pt                    # writes figures/fig*.png
    python visualize.py --ckpt run.pt --image ship --top9 conv5_x:7 --out figures
    python visualize.py --ckpt run.pt --compare plain.pt # adds fig6_compare.png
    python visualize.py --ckpt run.pt --sanity 10        # + the randomisation test's table
"""
import argparse
import math
import sys
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

import checkpoint
import cifar
import localize
import study
from deconvnet import project
from resnet18 import STAGES, WIDTHS, build, describe

matplotlib.use("Agg")  # files only, no window (honoured until the first figure)
TOP_CHANNELS = 8  # channels per layer in Figure 5's per-channel rows
FIGURES = ("fig1_learning_curve.png", "fig2_conv1_filters.png", "fig3_conv1_maps.png",
           "fig4_conv5_maps.png", "fig5_deconvnet.png", "fig6_compare.png", "fig7_localize.png")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="run.pt",
                   help="checkpoint written by train.py (default run.pt)")
    p.add_argument("--data", help="CIFAR-10 folder with the test images of Figures 3-5 "
                                   "(default: the run's --data)")
    p.add_argument("--image", default="0",
                   help="the test image of Figures 3-5: its index, or a class name for the "
                        "first test image of that class, e.g. ship (default 0)")
    p.add_argument("--out", default="figures", help="folder for the PNG files (default figures)")
    p.add_argument("--top9", metavar="LAYER:CHANNEL",
                   help="also draw the 9 test images that most activate this channel, e.g. "
                        "conv5_x:7 (conv1 and conv2_x have w channels, conv3_x 2w, conv4_x 4w, "
                        "conv5_x 8w, for --width w)")
    p.add_argument("--compare", nargs="+", metavar="CKPT", default=[],
                   help="other checkpoints, drawn with --ckpt in fig6_compare.png")
    p.add_argument("--figures", type=int, nargs="+", choices=range(1, 8), metavar="K",
                   default=list(range(1, 8)),
                   help="which figures to draw, e.g. --figures 1 7 (default all; 6 only with "
                        "--compare)")
    p.add_argument("--sanity", type=int, default=0, metavar="N",
                   help="also print the randomisation test of every Figure 7 map over the first N "
                        "test images of each class (default 0: not run; 10 takes a minute)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    args = p.parse_args(argv)
    if not (args.image.isascii() and args.image.isdigit()) and args.image not in cifar.CLASSES:
        p.error(f"--image {args.image}: give an index or a class name "
                f"({', '.join(cifar.CLASSES)})")
    return args


def parse_top9(spec, width):
    """'conv5_x:7' -> ('conv5_x', 7), checked against the run's channels."""
    layer, _, channel = spec.partition(":")
    if layer not in STAGES or not channel.isdigit():
        raise ValueError(f"--top9 {spec}: expected LAYER:CHANNEL with LAYER one of "
                         f"{', '.join(STAGES)}")
    channels = WIDTHS[layer] * width
    if int(channel) >= channels:
        raise ValueError(f"--top9 {spec}: {layer} has {channels} channels, no channel {channel}")
    return layer, int(channel)


def pick_image(spec, labels, data):
    """--image as an index into the test set, or the first test image of a class."""
    if spec.isdigit():
        if int(spec) >= len(labels):
            raise ValueError(f"--image {spec}: the test set in {data} has images 0 to "
                             f"{len(labels) - 1}")
        return int(spec)
    hits = np.flatnonzero(labels == cifar.CLASSES.index(spec))
    if not hits.size:
        raise ValueError(f"--image {spec}: the test set in {data} has no {spec}")
    return int(hits[0])


def grid(tiles, cols, pad=1):
    """(N, h, w[, 3]) tiles -> one image of rows x cols tiles, NaN (drawn white) between them."""
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad) + tiles.shape[3:], np.nan)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = t
    return out


def filter_grid(weight):
    """conv1 weights (C, 3, k, k) -> RGB grid, each filter scaled alone and symmetrically:
    0 is mid-grey."""
    w = weight.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # (C, 3, k, k) -> (C, k, k, 3)
    scale = np.abs(w).reshape(len(w), -1).max(1).clip(min=1e-12)  # (C,)
    w = 0.5 + w / (2 * scale[:, None, None, None])  # [-max, max] -> [0, 1]
    return np.nan_to_num(grid(w, math.ceil(math.sqrt(len(w)))), nan=1.0)


def show(images):
    """Normalised (B, 3, H, W) tensor -> displayable (B, H, W, 3) in [0, 1]."""
    mean, std = torch.tensor(cifar.MEAN).view(1, 3, 1, 1), torch.tensor(cifar.STD).view(1, 3, 1, 1)
    return (images.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def contrast(r):
    """Projections (B, 3, H, W) -> (B, H, W, 3) in [0, 1], each scaled to its own +-max
    (0 is grey)."""
    r = r.float().cpu()
    r = 0.5 + r / (2 * r.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12))
    return r.permute(0, 2, 3, 1).numpy()


def check_out(paths):
    """Refuse, before drawing, to replace a file that is not a figure (a checkpoint, or what
    a planted link points to)."""
    for path in paths:
        if path.exists() and (not path.is_file() or path.read_bytes()[:4] != b"\x89PNG"):
            raise ValueError(f"{path} exists and is not a PNG figure; it was left alone: "
                             f"pick another --out")


def save(fig, path):
    """Written like a checkpoint: a fresh temporary file, then a rename over `path`."""
    checkpoint.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=100,
                                                        bbox_inches="tight"))
    plt.close(fig)
    print(f"wrote {path}")


def fig1_learning_curve(history, run, path):
    it = [h["iteration"] for h in history]
    rows = [h for h in history if h["iteration"] % study.TABLE_EVERY == 0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "loss", "Cross-entropy loss"),
                           (axes[1], "acc", "Accuracy (%)")):
        ax.plot(it, [h[f"train_{key}"] for h in history], "o-", ms=3,
                label="train (no augmentation)")
        ax.plot(it, [h[f"test_{key}"] for h in history], "o-", ms=3, label="test")
        for d in (d for d in run["lr_drops"] if d <= it[-1]):  # the drops the run has passed
            ax.axvline(d, color="red", ls="--", lw=1, label=f"lr / 10 at {d:,}")
        if rows:
            ax.plot([h["iteration"] for h in rows], [h[f"test_{key}"] for h in rows], "ks",
                    mfc="none", ms=8, label="Table 1 rows (test)")
        ax.set(xlabel="iteration", title=title, xlim=(0, it[-1] * 1.02))
    studys = [(i, a) for i, a in study.TEST_ACC.items() if i <= it[-1]]
    if studys:
        axes[1].plot(*zip(*studys), "k*", ms=10, label="study, test (Table 1)")
    for ax in axes:
        ax.legend(fontsize=8)
    done = "" if it[-1] == run["iters"] else f", evaluated to iteration {it[-1]:,} of " \
                                              f"{run['iters']:,}"
    fig.suptitle(f"{describe(run)}, batch {run['batch']}{done}")
    save(fig, path)


def fig2_conv1_filters(model, path):
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(filter_grid(model.conv1[0].weight), interpolation="nearest")
    ax.set(title=f"The {model.conv1[0].out_channels} conv1 filters "
                 f"(3 x 3 RGB; grey = 0, each scaled alone)")
    ax.axis("off")
    save(fig, path)


def fig3_conv1_maps(x, feats, label, path):
    """The image and its conv1 maps; returns how many maps are blank (all zero)."""
    maps = feats["conv1"][0].float().cpu().numpy()  # (C, 32, 32)
    blank = int((maps.reshape(len(maps), -1).max(1) == 0).sum())
    maps = maps / maps.reshape(len(maps), -1).max(1).clip(min=1e-12)[:, None, None]  # each alone
    fig, axes = plt.subplots(1, 2, figsize=(14, 6.5), gridspec_kw={"width_ratios": [1, 2]})
    axes[0].imshow(show(x)[0], interpolation="nearest")
    axes[0].set(title=f"input: {label}")
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    axes[1].imshow(grid(maps, math.ceil(math.sqrt(len(maps)))), cmap=cmap, interpolation="nearest")
    axes[1].set(title=f"its {len(maps)} conv1 feature maps, {maps.shape[1]} x {maps.shape[2]} "
                      f"(each scaled alone); {blank} blank (all zero, black)")
    for ax in axes:
        ax.axis("off")
    save(fig, path)
    return blank


def fig4_conv5_maps(feats, label, path):
    maps = feats["conv5_x"][0].float().cpu().numpy()  # (C, 4, 4)
    blank = maps.reshape(len(maps), -1).max(1) == 0  # (C,) all-zero maps
    cols = 2 * math.ceil(math.sqrt(len(maps) / 2))
    h = maps.shape[1]
    fig, ax = plt.subplots(figsize=(14, 8))
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(grid(maps / max(maps.max(), 1e-12), cols), cmap=cmap, vmin=0, vmax=1,
              interpolation="nearest")
    for i in np.flatnonzero(blank):
        r, c = divmod(i, cols)
        ax.add_patch(plt.Rectangle((c * (h + 1) + 0.5, r * (h + 1) + 0.5), h, h, fill=False,
                                   ec="red", lw=0.8))
    ax.set(title=f"conv5_x feature maps of the {label}: {len(maps)} maps of {h} x {h}, one "
                 f"shared scale; {blank.sum()} blank (all zero), outlined in red")
    ax.axis("off")
    save(fig, path)
    return int(blank.sum())


def fig5_deconvnet(model, x, feats, path):
    """Top: the study's Figure 5, the reconstructions from whole layers. Below: each of the
    most active channels alone, from its strongest activation."""
    layers = [(layer, guided) for guided in (False, True) for layer in ("conv1", "conv5_x")]
    whole = [contrast(project(model, x, layer, guided=guided))[0] for layer, guided in layers]
    rows = []
    for layer, guided in (("conv1", False), ("conv5_x", False), ("conv5_x", True)):
        strength = feats[layer][0].flatten(1).amax(1)  # (C,) strongest activation per channel
        channels = strength.argsort(descending=True)[:TOP_CHANNELS].tolist()
        recons = [contrast(project(model, x, layer, c, keep="max", guided=guided))[0]
                  for c in channels]
        rows.append((f"{layer}{', guided' if guided else ''}", channels, recons))

    fig = plt.figure(figsize=(2 * (TOP_CHANNELS + 1), 2.3 * len(rows) + 3.6))
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6, 2.3 * len(rows)])
    axes = top.subplots(1, 1 + len(layers))
    axes[0].imshow(show(x)[0], interpolation="nearest")
    axes[0].set_title("input")
    for ax, (layer, guided), r in zip(axes[1:], layers, whole):
        ax.imshow(r, interpolation="nearest")
        ax.set_title(f"from all of {layer}{', guided' if guided else ''}")
    for ax in axes:
        ax.axis("off")
    top.suptitle("Reconstructions from a whole layer (the study's Figure 5): every activation "
                 "of the layer projected back to pixel space")
    grid_axes = bottom.subplots(len(rows), TOP_CHANNELS + 1)
    for (name, channels, recons), row in zip(rows, grid_axes):
        row[0].imshow(show(x)[0], interpolation="nearest")
        row[0].set_title("input")
        for ax, c, r in zip(row[1:], channels, recons):
            ax.imshow(r, interpolation="nearest")
            ax.set_title(f"{name} ch {c}", fontsize=9)
        for ax in row:
            ax.axis("off")
    bottom.suptitle("One channel at a time: each channel's strongest activation, most active "
                    "channels first; last row guided.\nEvery panel is scaled to its own range "
                    "(contrast-enhanced, grey = 0)")
    save(fig, path)


def fig6_compare(runs, path):
    """runs: [(label, history)]. Train dashed, test solid, one colour per run."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "loss", "Cross-entropy loss"),
                           (axes[1], "acc", "Accuracy (%)")):
        for (label, history), colour in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]
                                            * len(runs)):
            it = [h["iteration"] for h in history]
            ax.plot(it, [h[f"train_{key}"] for h in history], "--", color=colour,
                    label=f"{label}, train")
            ax.plot(it, [h[f"test_{key}"] for h in history], "-", color=colour,
                    label=f"{label}, test")
        ax.set(xlabel="iteration", title=title)
        ax.legend(fontsize=7)
    fig.suptitle("Learning curves: train (no augmentation) dashed, test solid")
    save(fig, path)


def top9(model, test_x, test_y, layer, channel, out):
    p = next(model.parameters())
    strength = []  # per test image, the channel's strongest activation
    with torch.no_grad():
        for i in range(0, len(test_x), 500):
            act = model.features(cifar.normalize(test_x[i:i + 500].to(p.device)))[layer]
            strength.append(act[:, channel].flatten(1).amax(1))  # (B, C, h, w) -> (B,)
    idx = torch.cat(strength).argsort(descending=True)[:9]
    names = [cifar.CLASSES[test_y[i]] for i in idx.tolist()]
    print(f"top9 {layer}:{channel}: test images {idx.tolist()} ({', '.join(names)})")
    x = cifar.normalize(test_x[idx].to(p.device))  # (9, 3, 32, 32)
    recons = contrast(project(model, x, layer, channel, keep="max"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    axes[0].imshow(np.nan_to_num(grid(recons, 3), nan=1.0), interpolation="nearest")
    axes[0].set_title("deconvnet projections (contrast-enhanced)")
    axes[1].imshow(np.nan_to_num(grid(show(x), 3), nan=1.0), interpolation="nearest")
    axes[1].set_title("the test images")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"The 9 test images that most activate {layer} channel {channel}: "
                 f"{', '.join(names)}")
    save(fig, Path(out) / f"top9_{layer}_{channel}.png")


def localize_maps(model, x, target):
    """Figure 7's maps of one image for one network: occlusion of the class, occlusion of the
    strongest conv5_x channel (relative to its unoccluded total), Grad-CAM (4 x 4), the guided
    projection from conv5_x; and the class probability unoccluded."""
    with torch.no_grad():
        prob = model(x).softmax(1)[0, target].item()
        act = model.features(x)["conv5_x"][0].sum((1, 2))  # (C,) total per channel
    channel = int(act.argmax())
    return {"occlusion": localize.occlusion(model, x, target),
            "feature": localize.occlusion_feature(model, x, "conv5_x", channel)
            / act[channel].clamp(min=1e-12),
            "gradcam": localize.gradcam(model, x, target),  # (4, 4)
            "guided": project(model, x, "conv5_x", guided=True),
            "channel": channel, "prob": prob}


def fig7_localize(model, test_x, test_y, index, path):
    """Rows: the --image on the trained network, the same on random weights, then the first
    test image of every other class. Columns: input, occlusion of the true class, occlusion of
    the strongest conv5_x channel, Grad-CAM over the image, guided projection from conv5_x."""
    p = next(model.parameters())
    fresh = localize.reinitialised(model)
    others = [int(np.flatnonzero(test_y == c)[0]) for c in range(10)
              if c != test_y[index] and (test_y == c).any()]
    rows = [(model, index, "trained"), (fresh, index, "random weights")] + \
        [(model, i, "trained") for i in others]
    titles = ["input", "P(true class), square over\neach place: 0 dark, 1 bright",
              "strongest conv5_x channel,\nshare of its total: 0 dark, 1 bright",
              "Grad-CAM at conv5_x,\nshare of its max: 0 dark, 1 bright",
              "guided projection from\nall of conv5_x (grey = 0)"]
    fig, axes = plt.subplots(len(rows), 5, figsize=(11, 2.3 * len(rows)), layout="constrained")
    for (net, i, kind), row in zip(rows, axes):
        x = cifar.normalize(torch.as_tensor(test_x[i:i + 1]).to(p.device))
        m = localize_maps(net, x, int(test_y[i]))
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


def sanity(model, test_x, test_y, per_class):
    """The randomisation test: Spearman's rho between each Figure 7 map on the trained network
    and on random weights, over the first `per_class` test images of every class; markdown."""
    p = next(model.parameters())
    fresh = localize.reinitialised(model)
    picks = [i for c in range(10) for i in np.flatnonzero(test_y == c)[:per_class]]
    rho = {k: [] for k in ("deconvnet", "guided", "occlusion", "gradcam")}
    for i in picks:
        x = cifar.normalize(torch.as_tensor(test_x[i:i + 1]).to(p.device))
        a, b = (localize_maps(net, x, int(test_y[i])) for net in (model, fresh))
        a["deconvnet"], b["deconvnet"] = (project(net, x, "conv5_x") for net in (model, fresh))
        for k in rho:
            if k in ("deconvnet", "guided"):  # a pixel map: the size of the projection
                a[k], b[k] = a[k][0].abs().sum(0), b[k][0].abs().sum(0)
            rho[k].append(localize.spearman(a[k], b[k]))
    lines = [f"Randomisation test over {len(picks)} test images (the first {per_class} of each "
             f"class): Spearman's rho between each map on the trained network and on random "
             f"weights",
             "| Map | rho, mean ± std | images with a constant map (rho undefined) |",
             "|---|---:|---:|"]
    for k, values in rho.items():
        v = torch.tensor(values, dtype=torch.float64)
        ok = v[~v.isnan()]
        lines.append(f"| {k} | {ok.mean():.2f} ± {ok.std():.2f} | {int(v.isnan().sum())} |")
    return "\n".join(lines)


def labels(paths, runs):
    """A legend entry per run: its network, the settings in which the runs differ, and its
    file where two entries would still read the same."""
    keys = [k for k in ("lr", "batch", "momentum", "wd", "seed", "iters", "lr_drops", "amp")
            if len({str(r[k]) for r in runs}) > 1]
    names = [describe(r) + "".join(f", {k} {r[k]}" for k in keys) for r in runs]
    return [f"{n} ({p})" if names.count(n) > 1 else n for n, p in zip(names, paths)]


def main(argv=None):
    args = get_args(argv)
    device = checkpoint.pick_device(args.device)
    paths = [Path(args.ckpt), *map(Path, args.compare)]
    twice = [p for p in paths if [q.resolve() for q in paths].count(p.resolve()) > 1]
    if twice:
        raise ValueError(f"--compare: {twice[0]} is given twice")
    (ckpt, run), *others = [checkpoint.load_valid(p) for p in paths]
    spec = args.top9 and parse_top9(args.top9, run["width"])

    # The test images, checked (with --image) before any figure is written.
    data = args.data
    if data is None and (cifar.find_folder(run["data"]) / cifar.TEST_FILES[0]).is_file():
        data = run["data"]  # the run's own folder, still there
    if data is not None:
        test_x, test_y = cifar.load_cifar10(data, train=False)
        index = pick_image(args.image, test_y, data)
        if ckpt.get("test_fingerprint", "") not in ("", checkpoint.fingerprint(test_x, test_y)):
            wrong = f"the test images in {data} are not the ones {args.ckpt} was evaluated on"
            if args.data is None:
                raise ValueError(f"{wrong}: pass --data with the run's CIFAR-10 folder")
            print(f"warning: {wrong}; the figures show these images", file=sys.stderr)

    out = Path(args.out)
    want = set(args.figures)
    check_out([out / FIGURES[k - 1] for k in want]
              + ([out / f"top9_{spec[0]}_{spec[1]}.png"] if spec else []))
    model = build(run, ckpt["model"], device).eval()
    out.mkdir(parents=True, exist_ok=True)
    history = ckpt["history"]
    print(f"{args.ckpt}: {describe(run)} at iteration {ckpt['iteration']:,}")
    print(f"Table 1 of this run, beside the study's:\n{study.table(history)}" if history else
          "no evaluation in this checkpoint yet: no Table 1, no Figure 1")
    if history and 1 in want:
        fig1_learning_curve(history, run, out / "fig1_learning_curve.png")
    if 2 in want:
        fig2_conv1_filters(model, out / "fig2_conv1_filters.png")
    if args.compare and 6 in want:
        runs = [run] + [r for _, r in others]
        fig6_compare(list(zip(labels(paths, runs), [ckpt["history"]] +
                              [c["history"] for c, _ in others])), out / "fig6_compare.png")
    if data is None:
        print(f"Figures 3-5 and 7 (feature maps, deconvnet, localisation) and --top9 need test "
              f"images, and the run's data folder ({run['data']}) has none: pass --data with the "
              f"CIFAR-10 folder")
        return 0
    if args.data is None:
        print(f"test images from {data}, the run's --data")
    test_x = torch.as_tensor(test_x)
    x = cifar.normalize(test_x[index:index + 1].to(device))  # (1, 3, 32, 32)
    label = f"test image {index} ({cifar.CLASSES[test_y[index]]})"
    with torch.no_grad():
        feats = model.features(x)
    if 3 in want:
        blank = fig3_conv1_maps(x, feats, label, out / "fig3_conv1_maps.png")
        print(f"conv1: {blank} of {feats['conv1'].shape[1]} feature maps of {label} are blank "
              f"(all zero)")
    if 4 in want:
        blank = fig4_conv5_maps(feats, label, out / "fig4_conv5_maps.png")
        print(f"conv5_x: {blank} of {feats['conv5_x'].shape[1]} feature maps of {label} are "
              f"blank (all zero)")
    if 5 in want:
        fig5_deconvnet(model, x, feats, out / "fig5_deconvnet.png")
    if spec:
        top9(model, test_x, test_y, *spec, out)
    if 7 in want:
        fig7_localize(model, test_x.numpy(), test_y, index, out / "fig7_localize.png")
    if args.sanity:
        print(sanity(model, test_x.numpy(), test_y, args.sanity))
    return 0


if __name__ == "__main__":
    sys.exit(checkpoint.cli(main))

"""visualize.py: the figures and the report from tiny checkpoints, the filter grid's scale, and
the rules by which a run tests the study's claims (visualize.claims)."""
import re

import numpy as np
import pytest
import torch

import cifar
import train
import visualize
from conftest import TINY, make_cifar, one_device, run_cli

FIGURES = ["fig1_learning_curve.png", "fig2_conv1_filters.png", "fig3_conv1_maps.png",
           "fig4_conv5_maps.png", "fig5_deconvnet.png", "runs_compared.png", "localize.png"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = make_cifar(folder / "data")
    for net in ((), ("--depth", 34, "--plain", "--ckpt", "plain34.pt")):
        r = run_cli("train.py", "--data", data, "--iters", 20, "--eval-every", 10,
                    "--lr-drops", 15, *TINY, *net, cwd=folder)
        assert r.returncode == 0, r.stderr
    return folder


@pytest.fixture(scope="module")
def drawn(tiny_run, tmp_path_factory):
    """visualize.py: every figure, --top9 and --sanity, under CUDA's one-device rule (conftest)."""
    out = tmp_path_factory.mktemp("figs")
    with one_device():
        r = run_cli("visualize.py", "--ckpt", tiny_run / "run.pt", "--data", tiny_run / "data",
                    "--image", "ship", "--out", out, "--top9", "conv5_x:2", "--sanity", 1,
                    "--compare", tiny_run / "plain34.pt", "--device", "cpu", cwd=out)
    return r, out


def blank_maps(tiny_run, index):
    """How many maps of conv1 and conv5_x are all zero for test image `index`, counted here."""
    model = train.load(tiny_run / "run.pt")[1].to(memory_format=torch.channels_last)
    images = torch.as_tensor(cifar.load_cifar10(tiny_run / "data", train=False)[0])
    with torch.no_grad():
        feats = model.features(cifar.normalize(images[index:index + 1]))
    return {k: int((feats[k][0].flatten(1).amax(1) == 0).sum()) for k in ("conv1", "conv5_x")}


def test_every_figure_top9_and_the_sanity_test_keep_one_device(drawn):
    r, out = drawn
    assert r.returncode == 0, r.stderr
    for name in FIGURES + ["top9_conv5_x_2.png"]:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000, name
    assert "| Iterations |" in r.stdout
    assert "over 10 test images (the first 1 of each class)" in r.stdout
    for method in ("deconvnet", "guided", "occlusion", "gradcam"):
        assert f"| {method} | " in r.stdout


def test_the_report_cites_the_checkpoint_and_what_the_figures_counted(tiny_run, drawn):
    r, out = drawn
    labels = cifar.load_cifar10(tiny_run / "data", train=False)[1]
    ship = int(np.flatnonzero(labels == cifar.CLASSES.index("ship"))[0])  # --image ship
    text, counted = (out / "report.md").read_text(), blank_maps(tiny_run, ship)
    assert f"The deconvnet reconstructions of test image {ship} (ship, P = " in text
    lowest = re.search(rf"test image {ship} \(ship, P = .+ lowers P\(ship\) to ([\d.]+)", text)[1]
    assert f", lowest {lowest}; rho " in text  # the localisation claim measured, on the figure's
    history = torch.load(tiny_run / "run.pt", weights_only=True)["history"]
    row = next(ln for ln in text.splitlines() if ln.startswith("| Test accuracy (%) |"))
    assert [float(c) for c in row.split("|")[2:-1]] == [round(h["test_acc"], 2) for h in history]
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(links) == 8 and all((out / link).is_file() for link in links)
    assert [ln[3:] for ln in text.splitlines() if ln.startswith("## ")][1:-2] == \
        [title for _, title, _ in visualize.FIGURES.values()]  # every figure, in order
    assert "Figure 6" not in text and "Figure 7" not in text  # the study has five
    assert f"{counted['conv1']} of the 8 conv1 maps of test image {ship} (ship" in text
    assert f"{counted['conv5_x']} of the 64 conv5_x maps of test image {ship} (ship" in text
    assert f"| {counted['conv5_x']} of 64 | " in text  # the claim's evidence


def test_top9_ranks_the_test_images_by_the_channels_strongest_activation(tiny_run, tmp_path,
                                                                          monkeypatch):
    model = train.load(tiny_run / "run.pt")[1]
    images, labels = cifar.load_cifar10(tiny_run / "data", train=False)
    drawn = []
    monkeypatch.setattr(visualize, "panels", lambda rows, title, path: drawn.append(rows))
    visualize.top9(model, torch.as_tensor(images), labels, "conv3_x", 5, tmp_path / "top9.png")
    with torch.no_grad():  # each image alone: its largest activation of conv3_x channel 5
        strength = [model.features(cifar.normalize(torch.as_tensor(images[i:i + 1])))["conv3_x"]
                    [0, 5].max().item() for i in range(len(labels))]
    shown = [strength[int(caption.split()[0])] for _, caption in drawn[0][0]]
    assert shown == pytest.approx(sorted(strength, reverse=True)[:9], rel=1e-5)


def test_filter_grid_scales_each_filter_alone_with_zero_mid_grey():
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 2.0, -1.0  # filter 0: one positive and one negative weight
    w[1] = 100 * torch.randn(3, 3, 3)
    img = visualize.filter_grid(w)  # 2 x 2 filters of 3 x 3, a white line before each
    f0, f1 = img[1:4, 1:4], img[1:4, 5:8]  # (3, 3, RGB) each
    assert img.shape == (8, 8, 3) and f0[0, 0, 0] == 1.0 and f0[1, 1, 1] == 0.25  # +-max / 2
    assert (np.delete(f0.reshape(-1), [0, 13]) == 0.5).all() and (img[5:8, 1:4] == 0.5).all()
    assert f1.min() >= 0 and f1.max() <= 1 and (f1.min() == 0 or f1.max() == 1)  # its own max


def history_of(acc10k, jump, late_rise, train_last):
    """An evaluation every 1,000 iterations of the study's schedule, shaped to order."""
    rows = []
    for it in range(1000, 50001, 1000):
        after = it > train.DROP
        rows.append({"iteration": it, "test_acc": 85.0 + jump * after,
                     "test_loss": 0.5 - 0.1 * after + (late_rise * (it - 40000) / 10000 * 0.4
                                                       if it > 40000 else 0),
                     "train_acc": train_last if it == 50000 else 90.0,
                     "step_acc": train_last if it == 50000 else 90.0})
    rows[9]["test_acc"] = acc10k
    return rows


STUDYS = {"depth": 18, "width": 64, "plain": False, "iters": 50000, "lr_drops": None}


@pytest.mark.parametrize("made_to", ["hold", "fail"])
def test_each_claim_follows_its_rule(made_to):
    hold = made_to == "hold"
    history = history_of(acc10k=80.0 if hold else 70.0, jump=5.0 if hold else 1.0,
                         late_rise=1.0 if hold else 0.0, train_last=99.9 if hold else 97.0)
    history[-1]["test_acc"] = 93.0 if hold else 85.0
    verdicts = visualize.claims(history, STUDYS, blank=(40, 64) if hold else (3, 64),
                                located=(0.1, 0.9, 0.2) if hold else (0.8, 0.9, 0.2))
    assert [v for _, _, v in verdicts] == [hold] * 8


def test_a_claim_a_run_cannot_test_says_why():
    short = [h for h in history_of(79.6, 5.0, 1.0, 100.0) if h["iteration"] <= 2000]
    reasons = [visualize.verdict(v) for _, _, v in visualize.claims(short, {**STUDYS,
                                                                           "lr_drops": []})]
    assert reasons == ["not measured: the run has no evaluation at 10,000",
                       "not measured: the run has no evaluation at 50,000",
                       "not measured: the run has no evaluations either side of a drop",
                       "not measured: fewer than three evaluations after a drop",
                       "not measured: the run is shorter (2,000 of 50,000 iterations)",
                       "not measured: the run is shorter (2,000 of 50,000 iterations)",
                       "not measured: no test image, so no Figure 4",
                       "not measured: the randomisation test was not asked for (--sanity N)"]
    narrow = visualize.claims(history_of(79.6, 5.0, 1.0, 100.0), {**STUDYS, "width": 16})
    assert [v for _, _, v in narrow[:2]] == ["the network is not the study's ResNet-18 at "
                                             "width 64"] * 2
    assert [visualize.verdict(v) for v in (True, False)] == ["holds", "does not hold"]
    before = [{k: v for k, v in h.items() if k != "step_acc"} for h in history_of(79.6, 5.0, 1.0,
                                                                                 100.0)]
    assert [visualize.verdict(v) for _, _, v in visualize.claims(before, STUDYS)[4:6]] == \
        ["holds", "not measured: the run was made before this measure was recorded"]

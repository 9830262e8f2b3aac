"""visualize.py: the figures from tiny checkpoints, and the filter grid's scale."""
import numpy as np
import pytest
import torch

import checkpoint
import cifar
import visualize
from conftest import TINY, make_cifar, run_cli
from resnet18 import describe

FIGURES = ["fig1_learning_curve.png", "fig2_conv1_filters.png", "fig3_conv1_maps.png",
           "fig4_conv5_maps.png", "fig5_deconvnet.png", "fig7_localize.png"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = make_cifar(folder / "data")
    for net in ((), ("--depth", 34, "--plain", "--ckpt", "plain34.pt")):
        r = run_cli("train.py", "--data", data, "--iters", 20, "--eval-every", 10,
                    "--lr-drops", 15, *TINY, *net, cwd=folder)
        assert r.returncode == 0, r.stderr
    return folder


def test_cli_writes_every_figure_and_the_sanity_table(tiny_run, tmp_path):
    r = run_cli("visualize.py", "--ckpt", tiny_run / "run.pt", "--data", tiny_run / "data",
                "--image", 3, "--out", tmp_path / "figs", "--top9", "conv5_x:2", "--sanity", 1,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in FIGURES + ["top9_conv5_x_2.png"]:
        png = (tmp_path / "figs" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    assert "| Iterations |" in r.stdout and "feature maps of test image 3" in r.stdout
    assert "Randomisation test over 10 test images (the first 1 of each class)" in r.stdout
    for method in ("deconvnet", "guided", "occlusion", "gradcam"):
        assert f"| {method} | " in r.stdout


def test_image_by_class_name_is_the_first_test_image_of_that_class(tiny_run, tmp_path):
    first_ship = int(np.flatnonzero(cifar.load_cifar10(tiny_run / "data", train=False)[1] == 8)[0])
    r = run_cli("visualize.py", "--ckpt", tiny_run / "plain34.pt", "--image", "ship",
                "--out", tmp_path, "--figures", 4, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"feature maps of test image {first_ship} (ship)" in r.stdout


def test_compare_draws_every_run_labelled_by_its_network(tiny_run, tmp_path):
    r = run_cli("visualize.py", "--ckpt", tiny_run / "run.pt", "--compare", tiny_run / "plain34.pt",
                "--out", tmp_path, "--figures", 6, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fig6_compare.png").read_bytes().startswith(b"\x89PNG")
    runs = [checkpoint.load_valid(tiny_run / n)[1] for n in ("run.pt", "plain34.pt")]
    assert [describe(r) for r in runs] == ["ResNet-18, width 8",
                                                                 "plain-34, width 8"]


def test_cli_without_data_uses_the_runs_data_or_draws_what_it_can(tiny_run, tmp_path):
    r = run_cli("visualize.py", "--ckpt", tiny_run / "run.pt", "--out", tmp_path / "a",
                "--figures", 1, 2, 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the run's --data" in r.stdout
    assert sorted(p.name for p in (tmp_path / "a").glob("*.png")) == FIGURES[:3]
    ckpt = torch.load(tiny_run / "run.pt", weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    r = run_cli("visualize.py", "--ckpt", tmp_path / "moved.pt", "--out", tmp_path / "b",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "need test images" in r.stdout and "pass --data" in r.stdout
    assert sorted(p.name for p in (tmp_path / "b").glob("*.png")) == FIGURES[:2]


def test_filter_grid_maps_zero_to_mid_grey():
    w = torch.zeros(4, 3, 3, 3)
    w[0, 0, 0, 0], w[0, 1, 1, 1] = 2.0, -1.0  # filter 0: one positive and one negative weight
    w[1] = torch.randn(3, 3, 3)
    img = visualize.filter_grid(w)  # 2 x 2 filters of 3 x 3, 1-pixel white borders
    assert img.shape == (9, 9, 3)
    f0 = img[1:4, 1:4]  # (3, 3, RGB)
    assert f0[0, 0, 0] == 1.0 and f0[1, 1, 1] == 0.25  # +max -> 1, -max / 2 -> 0.25
    assert (np.delete(f0.reshape(-1), [0, 4 * 3 + 1]) == 0.5).all()  # every zero weight is mid-grey
    # An all-zero filter is all grey.
    assert (img[1:4, 5:8] != 0.5).any() and (img[5:8, 1:4] == 0.5).all()
    f1 = img[1:4, 5:8]
    # Symmetric, to its own max.
    assert f1.min() >= 0 and f1.max() <= 1 and (f1.min() == 0 or f1.max() == 1)

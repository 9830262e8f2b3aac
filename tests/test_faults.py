"""Bad input and injected faults: one true line and a non-zero exit, and no file lost or mixed.

One parametrised test per class of fault; each case names the fault and the words of its error.
The scripts run in this process as their `__main__` blocks run them (conftest.run_cli); the
faults that need a hand inside a run are the named helpers of tests/inject.py. The cases that
need a process of their own (signals, SIGKILL, stdout, two runs) are in test_process.py.
"""
import hashlib
import http.server
import os
import pickle
import signal
import tarfile
import threading
import time

import pytest
import torch

import checkpoint
import cifar
import inject
import train
import visualize
from conftest import TINY, make_cifar, run_cli


def assert_one_line_error(r, *fragments):
    """A non-zero exit, no traceback, one line (ours, or argparse's usage and error)."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    ours = len(lines) == 1 and lines[0].startswith("error: ")
    usage = lines[0].startswith("usage:") and ": error: " in lines[-1] \
        and all(ln.startswith(" ") for ln in lines[1:-1])
    assert ours or usage, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def files(folder):
    """Every file under `folder`, as bytes, to compare before and after."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def train_cli(tmp_path, data, *flags, iters=5):
    return run_cli("train.py", "--data", data, "--iters", iters, *TINY, *flags, cwd=tmp_path)


# --- Bad data ------------------------------------------------------------------------------

def set_bytes(f, data):
    f.write_bytes(data(f.read_bytes()))


def replace(f, make):
    f.unlink()
    make(f)


BAD_BATCH = {  # how data_batch_3.bin is broken: (how to make it so, the words of the error)
    "truncated": (lambda f: set_bytes(f, lambda b: b[:-100]),
                  "not a whole number (1 to 60,000) of 3073-byte"),
    "extra bytes": (lambda f: set_bytes(f, lambda b: b + bytes(7)), "not a whole number"),
    "empty": (lambda f: f.write_bytes(b""), "0 bytes, not a whole number"),
    "bad label": (lambda f: set_bytes(f, lambda b: b[:6146] + b"\xc8" + b[6147:]),
                  "record 2 has label 200, expected 0-9"),
    "too large": (lambda f: os.truncate(f, cifar.RECORD_BYTES * (cifar.MAX_RECORDS + 1)),
                  "not a whole number (1 to 60,000)"),
    "a folder": (lambda f: replace(f, lambda f: f.mkdir()), "a folder, a pipe or a device"),
    "a FIFO": (lambda f: replace(f, os.mkfifo), "a folder, a pipe or a device"),
    "/dev/zero": (lambda f: replace(f, lambda f: f.symlink_to("/dev/zero")), "a pipe or a device"),
}


@pytest.mark.parametrize("how", BAD_BATCH)
def test_a_bad_batch_file_is_named(tiny_data, tmp_path, how):
    make, message = BAD_BATCH[how]
    make(tiny_data / "data_batch_3.bin")
    r = train_cli(tmp_path, tiny_data)
    assert_one_line_error(r, message, str(tiny_data / "data_batch_3.bin"))
    assert not (tmp_path / "run.pt").exists()


@pytest.mark.parametrize("state", ["missing", "empty", "partial"])
def test_missing_data_is_named_and_partial_data_never_overwritten(tmp_path, state):
    data = tmp_path / "data"
    if state != "missing":
        data.mkdir()
    if state == "partial":
        make_cifar(data)
        (data / "data_batch_2.bin").unlink()
    before = files(tmp_path)
    r = run_cli("train.py", "--data", data, "--iters", 5, "--width", 8, "--device", "cpu",
                *(["--no-download"] if state != "partial" else []), cwd=tmp_path)
    missing = "data_batch_2.bin" if state == "partial" else "data_batch_1.bin"
    assert_one_line_error(r, "missing", missing, cifar.URL)
    assert files(tmp_path) == before


def test_an_unreadable_file_is_named(tiny_data, tmp_path, monkeypatch):
    inject.unreadable_test_batch(monkeypatch.setattr)
    r = train_cli(tmp_path, tiny_data)
    assert_one_line_error(r, "Permission denied", str(tiny_data / "test_batch.bin"))


def tgz_of(folder, path, cut=None):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=cifar.FOLDER)
    if cut:
        path.write_bytes(path.read_bytes()[:cut(len(path.read_bytes()))])
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("archive,message", [
    ("wrong md5", "MD5 is"), ("truncated", "MD5 is"), ("a folder", "Is a directory"),
    ("truncated, right md5", "could not extract it"), ("offline", "could not download")])
def test_a_bad_archive_or_no_network_is_named_and_leaves_only_what_was_there(tmp_path, monkeypatch,
                                                                            archive, message):
    data, tgz = tmp_path / "data", tmp_path / "data" / "cifar-10-binary.tar.gz"
    data.mkdir()
    if archive == "a folder":
        tgz.mkdir()
    elif archive != "offline":
        md5 = tgz_of(make_cifar(tmp_path / "src"), tgz,
                     (lambda n: n // 2) if archive.startswith("truncated") else None)
        if archive == "truncated, right md5":
            monkeypatch.setattr(cifar.download_cifar10, "__defaults__", (cifar.URL, md5))
    else:
        inject.offline(monkeypatch.setattr)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", data, "--iters", 5, "--width", 8, "--device", "cpu",
                cwd=tmp_path)
    assert_one_line_error(r, f"no CIFAR-10 files in {data}, so a download was tried", message)
    assert files(tmp_path) == before and sorted(p.name for p in data.iterdir()) == \
        ([] if archive == "offline" else ["cifar-10-binary.tar.gz"])


def test_a_mistyped_data_folder_creates_nothing_and_a_file_is_not_a_folder(tmp_path,
                                                                           monkeypatch):
    inject.offline(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tmp_path / "typo", "--iters", 5, cwd=tmp_path)
    assert_one_line_error(r, f"no CIFAR-10 files in {tmp_path / 'typo'}, so a download was "
                             f"tried: could not download http://127.0.0.1:9/")
    assert not (tmp_path / "typo").exists()
    (tmp_path / "data").write_text("not a folder\n")
    r = train_cli(tmp_path, tmp_path / "data")
    assert_one_line_error(r, f"--data {tmp_path / 'data'}: a file, not a folder")


# --- Bad flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (("--iters", 0), "--iters: must be an integer from 1, got '0'"),
    (("--iters", -5), "--iters: must be an integer from 1"),
    (("--iters", "²"), "--iters: must be an integer from 1, got '²'"),
    (("--batch", 0), "--batch: must be an integer from 1"),
    (("--iters", 100, "--lr-drops", 100), "--lr-drops 100 must all be below --iters 100"),
    (("--lr-drops", 2, 2), "--lr-drops 2 2: an iteration given twice"),
    (("--lr-drops", *range(1, 352)), "--lr-drops: 351 drops would divide the rate by 10**351"),
    (("--eval-every", -1), "--eval-every: must be an integer from 0, got '-1'"),
    (("--lr", -1), "--lr: must be a number from 0 to 3.4e38, got '-1'"),
    (("--lr", 0), "--lr 0.0 above 0"),
    (("--lr", "nan"), "--lr: must be a number from 0 to 3.4e38, got 'nan'"),
    (("--lr", "1e39"), "--lr: must be a number from 0 to 3.4e38, got '1e39'"),
    (("--wd", "inf"), "--wd: must be a number from 0 to 3.4e38, got 'inf'"),
    (("--wd", -1), "--wd: must be a number from 0 to 3.4e38, got '-1'"),
    (("--momentum", 1), "--momentum 1.0 must be below 1"),
    (("--seed", 2**64), "--seed: must be an integer from 0 to 18446744073709551615"),
    (("--seed", -1), "--seed: must be an integer from 0"),
    (("--width", 4), "--width: must be an integer from 8, got '4'"),
    (("--depth", 50), "--depth: must be 18 or 34, got '50'"),
])
def test_a_nonsense_flag_is_named_with_its_value_by_the_parser(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        train.get_args(list(map(str, flags)))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage:")
    assert message in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("flags,message", [
    (("--batch", 81), "batch size 81 must be between 1 and the 80 images"),
    (("--device", "cuda"), "CUDA is not available"),
    (("--device", "tpu"), "--device tpu: not a device"),
    (("--device", "cpu:1"), "--device cpu:1: not a device"),
    (("--width", 100000), "--width 100000: ResNet-18, width 100000 would need"),
])
def test_a_nonsense_value_is_named_before_any_file_is_written(tiny_data, tmp_path, flags,
                                                              message):
    if flags[:2] == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, "--width", 8, "--no-download",
                *flags, cwd=tmp_path)
    assert_one_line_error(r, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- The checkpoint's place ------------------------------------------------------------------

@pytest.mark.parametrize("ckpt,message", [
    ("nodir/run.pt", "the folder nodir does not exist"),
    ("results.csv", "--ckpt results.csv: give a file name ending in .pt"),
    ("exp", "--ckpt exp: give a file name ending in .pt"),
    ("folder", "--ckpt folder: give a file name ending in .pt"),
    ("folder.pt", "--ckpt folder.pt: folder.pt is a folder"),
    ("sib.pt", "--ckpt sib.pt: sib.csv is a folder"),
    ("results.pt", "results.csv exists, and the run would write its history there"),
    ("uv.pt", "uv.pt.lock exists and is not a lock of train.py; it was left alone")])
def test_a_checkpoint_that_could_not_be_saved_or_would_overwrite_is_refused(tiny_data, tmp_path,
                                                                            ckpt, message):
    for folder in ("folder", "folder.pt", "sib.csv"):
        (tmp_path / folder).mkdir()
    (tmp_path / "results.csv").write_text("my,precious\n")
    (tmp_path / "uv.pt.lock").write_text("version = 1\n")
    before = files(tmp_path)
    r = train_cli(tmp_path, tiny_data, "--ckpt", ckpt)
    assert_one_line_error(r, message)
    assert "it " not in r.stdout and files(tmp_path) == before  # no training, nothing touched


@pytest.mark.parametrize("fault,message", [
    ("unwritable folder", "--ckpt run.pt: cannot open the lock file run.pt.lock (Permission"),
    ("a link at the lock", "--ckpt run.pt: cannot open the lock file run.pt.lock")])
def test_a_lock_that_cannot_be_taken_is_refused_before_training(tiny_data, tmp_path, monkeypatch,
                                                                fault, message):
    (tmp_path / "victim.txt").write_text("precious\n")
    if fault == "unwritable folder":
        inject.unwritable_folders(monkeypatch.setattr)
    else:
        (tmp_path / "run.pt.lock").symlink_to(tmp_path / "victim.txt")
    r = train_cli(tmp_path, tiny_data)
    assert_one_line_error(r, message)
    assert "it " not in r.stdout and (tmp_path / "victim.txt").read_text() == "precious\n"


@pytest.mark.parametrize("name", [".run.pt.tmp", "run.pt.tmp", "run.csv.tmp", ".run.csv.tmp"])
def test_a_planted_symlink_at_a_temporary_name_is_never_written_through(tiny_data, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / name).symlink_to(victim)
    r = train_cli(tmp_path, tiny_data, "--eval-every", 5, iters=10)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n" and (tmp_path / name).is_symlink()
    checkpoint.load(tmp_path / "run.pt", resume=True)


def test_a_lock_left_by_a_killed_run_is_taken_and_removed(tiny_data, tmp_path):
    (tmp_path / "run.pt.lock").write_bytes(checkpoint.LOCK_TAG + b"12345\n")
    r = train_cli(tmp_path, tiny_data)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run.pt.lock").exists()


# --- Bad checkpoints: for --resume and for visualize.py ----------------------------------------

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    make_cifar(folder / "data")
    r = run_cli("train.py", "--data", folder / "data", "--iters", 10, "--eval-every", 5, *TINY,
                cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def edited(change):
    """A way to make a bad checkpoint from a good one: load it, change(it), save it."""
    def make(good, path, marker):
        ckpt = torch.load(good, weights_only=True)
        change(ckpt, marker)
        torch.save(ckpt, path)
    return make


def nan_first(tensors):
    t = next(iter(tensors.values())) if isinstance(tensors, dict) else tensors[0]
    t[(0,) * t.dim()] = float("nan")


BAD_CKPT = {  # what is wrong: (how to make it so from a good checkpoint, the words of the error)
    "truncated": (lambda g, p, m: p.write_bytes(g.read_bytes()[:len(g.read_bytes()) // 2]),
                  "the checkpoint is truncated or corrupt"),
    "a CSV": (lambda g, p, m: p.write_text("iteration,lr\n5,0.1\n"), "not a checkpoint (train.py"),
    "a PNG": (lambda g, p, m: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100)), "not a checkpoint"),
    "empty": (lambda g, p, m: p.write_bytes(b""), "not a checkpoint"),
    "a folder": (lambda g, p, m: p.mkdir(), "a folder"),
    "code (torch.save)": (edited(lambda c, m: c["args"].update(evil=Payload(m))),
                          "refused: it holds Python objects (posix.system), and loading them"),
    "code (raw pickle)": (lambda g, p, m: p.write_bytes(pickle.dumps({"model": Payload(m)})),
                          "not a checkpoint (train.py writes torch.save files"),
    "a list": (lambda g, p, m: torch.save([1], p), "it holds a list, not a dict"),
    "no model": (edited(lambda c, m: c.pop("model")), "it lacks 'model'"),
    "model None": (edited(lambda c, m: c.update(model=None)), "Expected state_dict to be dict"),
    "int64 weights": (edited(lambda c, m: c.update(model={k: v.long() for k, v in
                                                          c["model"].items()})),
                      'named "conv1.0.weight": Only Tensors of floating point'),
    "a missing tensor": (edited(lambda c, m: c["model"].pop("fc.bias")),
                         'Missing key(s) in state_dict: "fc.bias"'),
    "a wrong shape": (edited(lambda c, m: c["model"].update({"fc.bias": torch.zeros(11)})),
                      "size mismatch for fc.bias"),
    "NaN weights": (edited(lambda c, m: nan_first(c["model"])), "a weight holds NaN"),
    "fractional iteration": (edited(lambda c, m: c.update(iteration=2.5)), "iteration is 2.5"),
    "iteration past --iters": (edited(lambda c, m: c.update(iteration=11)), "iteration is 11"),
    "history not a list": (edited(lambda c, m: c.update(history=5)), "not iterable"),
    "a history row without keys": (edited(lambda c, m: c["history"][0].pop("test_acc")),
                                   "lacks a key"),
    "a text in history": (edited(lambda c, m: c["history"][0].update(lr="0.1")),
                          "not a finite number"),
    "NaN in history": (edited(lambda c, m: c["history"][1].update(test_loss=float("nan"))),
                       "not a finite number"),
    "history iteration 10**9": (edited(lambda c, m: c["history"][1].update(iteration=10**9)),
                                "iterations must increase up to 10"),
    "history not increasing": (edited(lambda c, m: c["history"][1].update(iteration=5)),
                               "iterations must increase"),
    "args not a dict": (edited(lambda c, m: c.update(args=[1])), "not a valid checkpoint"),
    "a text width": (edited(lambda c, m: c["args"].update(width="8")),
                     "args.width is '8', not a value of --width"),
    "a huge width": (edited(lambda c, m: c["args"].update(width=3000)),
                     "size mismatch for conv1.0.weight"),
    "depth 50": (edited(lambda c, m: c["args"].update(depth=50)), "args.depth is 50"),
    "no lr_drops": (edited(lambda c, m: c["args"].pop("lr_drops")), "args lacks lr_drops"),
}
FOR_RESUME = {  # read only by a resumed run
    "too few momenta": (edited(lambda c, m: c["momentum"].pop()), "momentum does not fit"),
    "a momentum's shape": (edited(lambda c, m: c["momentum"].__setitem__(0, torch.zeros(1))),
                           "momentum does not fit"),
    "NaN momentum": (edited(lambda c, m: nan_first(c["momentum"])), "a weight holds NaN"),
    "loader position -1000": (edited(lambda c, m: c["loader"].update(pos=-1000)),
                              "loader.pos is -1000"),
    "not a permutation": (edited(lambda c, m: c["loader"]["order"].fill_(0)),
                          "not a generator state and a permutation"),
    "no generator": (edited(lambda c, m: c["loader"].update(generator=None)), "'dtype'"),
    "data_fingerprint a number": (edited(lambda c, m: c.update(data_fingerprint=5)),
                                  "'upper' for 'str' objects"),
    "weights only": (edited(lambda c, m: [c.pop("momentum"), c.pop("loader")]),
                     "it holds the weights of a run, not the state to resume it"),
}


@pytest.mark.parametrize("kind", list(BAD_CKPT) + list(FOR_RESUME))
def test_a_bad_checkpoint_is_one_line_naming_it_and_changes_nothing(good_run, tmp_path, kind):
    make, message = {**BAD_CKPT, **FOR_RESUME}[kind]
    marker, ckpt = tmp_path / "PAYLOAD_RAN", tmp_path / "bad.pt"
    make(good_run / "run.pt", ckpt, marker)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, *TINY, "--ckpt", ckpt,
                "--resume", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    r = run_cli("visualize.py", "--ckpt", ckpt, "--out", tmp_path / "figs", "--figures", 6,
                cwd=tmp_path)  # 6 without --compare: no figure, the report only
    if kind in FOR_RESUME:  # read: visualize.py reads no resume state
        assert r.returncode == 0, r.stderr
    else:
        assert_one_line_error(r, str(ckpt), message)
        assert files(tmp_path) == before
    assert not marker.exists(), "the checkpoint's code ran"
    if kind.startswith("code"):  # the payload is real: an unsafe load would have run it
        pickle.loads(pickle.dumps(Payload(marker)))
        assert marker.exists()


@pytest.mark.parametrize("flags,message", [
    (("--width", 16), "trained with --width 8; --width 16 would change its 10 iterations run"),
    (("--amp",), "trained with --amp False; --amp True would change"),
    (("--depth", 34), "trained with --depth 18; --depth 34 would change"),
    (("--plain",), "trained with --plain False; --plain True would change"),
    (("--data", "other"), "was trained on other data"),
    ((), "run.pt exists: continue it with `python")])
def test_a_run_that_would_change_or_overwrite_a_checkpoint_is_refused(good_run, tmp_path, flags,
                                                                      message):
    (tmp_path / "run.pt").write_bytes((good_run / "run.pt").read_bytes())
    make_cifar(tmp_path / "other", seed=1)
    before = files(tmp_path)
    args = ["--data", good_run / "data", "--iters", 20, "--eval-every", 5, *TINY, *flags]
    r = run_cli("train.py", *args, *(["--resume"] if flags else []), cwd=tmp_path)
    assert_one_line_error(r, message)
    assert files(tmp_path) == before


def test_visualize_checks_its_flags_before_writing_a_figure(good_run, tmp_path):
    (tmp_path / "README.md").write_text("# not a checkpoint\n")
    for flags, message in ((("--image", 32), "--image 32: the test set"),
                           (("--image", "dragon"), "--image dragon: give an index or a class"),
                           (("--image", "²"), "--image ²: give an index or a class"),
                           (("--top9", "fc:1"), "--top9 fc:1: expected LAYER:CHANNEL"),
                           (("--top9", "conv1:99"), "conv1 has 8 channels, no channel 99"),
                           (("--compare", "missing.pt"), "missing.pt: no such checkpoint file"),
                           (("--compare", "README.md"), "README.md: not a checkpoint"),
                           (("--compare", good_run / "run.pt"), "is given twice")):
        r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data",
                    *flags, "--out", tmp_path / "figs", cwd=tmp_path)
        assert_one_line_error(r, message)
        assert not (tmp_path / "figs").exists()


# --- Faults during a run -----------------------------------------------------------------

def sigterm_at_step(monkeypatch, n):
    real, steps = train.train_step, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", step)


@pytest.mark.parametrize("fault,flags,message", [
    ("disk full at the second save", (), "could not write run.pt (No space left on device); "
                                         "the previous file, if any, is intact"),
    ("NaN loss at step 7", (), "training loss became nan by iteration 10: training diverged; "
                               "run.pt still holds iteration 5"),
    ("NaN, then SIGTERM", (), "the weights became NaN or infinite by iteration 8: training "
                              "diverged; run.pt still holds iteration 5"),
    ("a huge learning rate", ("--lr", 1e12), "training diverged; no checkpoint was written")])
def test_a_fault_during_a_run_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                             fault, flags, message):
    if fault.startswith("disk"):
        inject.disk_full_at_second_save(monkeypatch.setattr)
    if fault.startswith("NaN"):
        inject.nan_at_step_7(monkeypatch.setattr)
    if fault.endswith("SIGTERM"):
        sigterm_at_step(monkeypatch, 8)
    r = train_cli(tmp_path, tiny_data, "--eval-every", 5, *flags, iters=20)
    assert_one_line_error(r, message)
    if flags:
        assert not (tmp_path / "run.pt").exists()
    else:
        assert checkpoint.load(tmp_path / "run.pt", resume=True)[0]["iteration"] == 5
    assert not list(tmp_path.glob(".*.tmp")), "a partial temporary file is left"


# --- visualize.py: what it writes and what it draws -----------------------------------------

def test_visualize_never_writes_through_a_link_or_over_a_file_not_its_own(good_run, tmp_path):
    (tmp_path / "victim.txt").write_text("precious\n")
    for out, name in (("figs", "fig2_conv1_filters.png"), ("out", "fig1_learning_curve.png"),
                      ("rep", "report.md")):
        (tmp_path / out).mkdir()
        if out == "figs":
            (tmp_path / out / name).symlink_to(tmp_path / "victim.txt")
        else:
            (tmp_path / out / name).write_bytes((good_run / "run.pt").read_bytes())
    before = files(tmp_path)
    for out in ("figs", "out", "rep"):
        r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", out, "--figures", 1,
                    2, cwd=tmp_path)
        assert_one_line_error(r, "is not a figure or report of visualize.py; it was left alone")
    assert files(tmp_path) == before
    # A link to a figure is replaced by the new figure; the file it pointed to is left alone.
    (tmp_path / "old.png").write_bytes(b"\x89PNG old")
    (tmp_path / "figs" / "fig2_conv1_filters.png").unlink()
    (tmp_path / "figs" / "fig2_conv1_filters.png").symlink_to(tmp_path / "old.png")
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", "figs", "--figures", 2,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "old.png").read_bytes() == b"\x89PNG old"
    assert not (tmp_path / "figs" / "fig2_conv1_filters.png").is_symlink()


def test_visualize_draws_only_the_runs_test_images_unless_told(good_run, tmp_path):
    ckpt = torch.load(good_run / "run.pt", weights_only=True)
    assert ckpt["args"]["data"] == str(good_run / "data")  # stored absolute
    ckpt["args"]["data"] = "data"  # as an older run stored it: relative to where it ran
    torch.save(ckpt, tmp_path / "old.pt")
    make_cifar(tmp_path / "data", seed=1)  # other images, where the relative name now points
    r = run_cli("visualize.py", "--ckpt", "old.pt", "--out", "figs", cwd=tmp_path)
    assert_one_line_error(r, "the test images in data are not the ones old.pt was evaluated on",
                          "pass --data")
    assert not (tmp_path / "figs").exists()
    r = run_cli("visualize.py", "--ckpt", "old.pt", "--data", "data", "--out", "figs",
                "--figures", 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("warning: the test images in data are not the ones old.pt")
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", "ok", "--figures", 3,
                cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_figures_that_need_test_images_without_any_say_why(good_run, tmp_path):
    ckpt = torch.load(good_run / "run.pt", weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    r = run_cli("visualize.py", "--ckpt", "moved.pt", "--out", "figs", "--figures", 7,
                cwd=tmp_path)
    assert_one_line_error(r, "need test images", "has none: pass --data")
    assert not (tmp_path / "figs").exists()
    r = run_cli("visualize.py", "--ckpt", "moved.pt", "--out", "figs", cwd=tmp_path)
    assert r.returncode == 0 and "need test images" in r.stdout, r.stderr
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "fig1_learning_curve.png", "fig2_conv1_filters.png", "report.md"]


# --- Interrupted and stalled downloads, Ctrl-C ------------------------------------------------

def test_ctrl_c_in_a_download_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(url, path):
        path.write_bytes(b"8 MB of a download")
        raise KeyboardInterrupt
    monkeypatch.setattr(cifar, "fetch", interrupted)
    (tmp_path / "old").mkdir()
    for folder in ("new", "old"):
        with pytest.raises(KeyboardInterrupt):
            cifar.load_or_download(tmp_path / folder)
    assert not (tmp_path / "new").exists() and list((tmp_path / "old").iterdir()) == []


def test_a_stalled_download_times_out_on_a_line_of_its_own(tmp_path, capsys):
    class Silent(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(2)  # then nothing: a server that is gone

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TimeoutError):
            cifar.fetch(f"http://127.0.0.1:{server.server_port}/c.tar.gz", tmp_path / "c.part",
                        timeout=0.3)
    finally:
        server.shutdown()
    assert capsys.readouterr().err.endswith("\n")  # the error starts on a line of its own


def test_ctrl_c_in_visualize_is_one_line(good_run, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(visualize, "fig2_conv1_filters", interrupted)
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", "figs", cwd=tmp_path)
    assert_one_line_error(r, "interrupted; nothing partial was written")


def test_compare_labels_runs_by_what_differs(good_run):
    run = torch.load(good_run / "run.pt", weights_only=True)["args"]
    other = {**run, "lr": 0.05}
    assert visualize.labels(["a.pt", "b.pt"], [run, other]) == ["ResNet-18, width 8, lr 0.1",
                                                                "ResNet-18, width 8, lr 0.05"]
    assert visualize.labels(["a.pt", "b.pt"], [run, run]) == ["ResNet-18, width 8 (a.pt)",
                                                              "ResNet-18, width 8 (b.pt)"]

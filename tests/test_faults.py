"""Bad input and injected faults: one line naming the file or the flag, a non-zero exit, no file
lost. One parametrised test per guarantee, each case named with the words of its error; faults
inside a run are the named helpers of tests/inject.py. Signals and kills: test_process.py."""
import os
import pickle
import tarfile

import pytest
import torch

import cifar
import inject
import train
from conftest import REPO, TINY, assert_one_line_error, files, make_cifar, run_cli, tgz_of


# --- 1. A save is atomic, and never of a state that is not finite ------------------------------

@pytest.mark.parametrize("fault,flags,message", [
    ("disk full at the second save", (), "could not write run.pt"),
    ("NaN loss at step 7", (), "by iteration 10: training diverged; run.pt still holds"),
    ("a huge learning rate", ("--lr", 1e12), "training diverged; no checkpoint was written")])
def test_a_fault_during_a_run_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch,
                                                             fault, flags, message):
    if fault.startswith("disk"):
        inject.disk_full_at_second_save(monkeypatch.setattr)
    if fault.startswith("NaN"):
        inject.nan_at_step_7(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 20, "--eval-every", 5, *TINY, *flags,
                cwd=tmp_path)
    assert_one_line_error(r, message)
    if flags:
        assert not (tmp_path / "run.pt").exists()
    else:
        assert train.load(tmp_path / "run.pt")[0]["iteration"] == 5
    assert not list(tmp_path.glob("*.tmp")), "a partial temporary file is left"


# --- 2. A file that is not a checkpoint of train.py: one line, for --resume and visualize.py ----

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
    """A way to make a bad checkpoint from a good one: load it, change(it, marker), save it."""
    def make(good, path, marker):
        ckpt = torch.load(good, weights_only=True)
        change(ckpt, marker)
        torch.save(ckpt, path)
    return make


BAD_CKPT = {  # what is wrong: (how to make it so from a good checkpoint, the words of the error)
    "truncated": (lambda g, p, m: p.write_bytes(g.read_bytes()[:99999]), "not a checkpoint"),
    "truncated early": (lambda g, p, m: p.write_bytes(g.read_bytes()[:9999]), "not a checkpoint"),
    "a CSV": (lambda g, p, m: p.write_text("iteration,lr\n5,0.1\n"), "not a checkpoint"),
    "empty": (lambda g, p, m: p.write_bytes(b""), "not a checkpoint of train.py"),
    "a folder": (lambda g, p, m: p.mkdir(), "Is a directory"),
    "none": (lambda g, p, m: None, "no such checkpoint: train one with `python train.py --ckpt"),
    "code": (edited(lambda c, m: c["args"].update(evil=Payload(m))), "weights_only refused it"),
    "a list": (lambda g, p, m: torch.save([1], p), "not a checkpoint of train.py"),
    "no model": (edited(lambda c, m: c.pop("model")), "not a checkpoint of train.py ('model')"),
    "a missing tensor": (edited(lambda c, m: c["model"].pop("fc.bias")), '"fc.bias"'),
    "another network": (edited(lambda c, m: c["args"].update(width=16)), "size mismatch"),
}


@pytest.mark.parametrize("kind", BAD_CKPT)
def test_a_bad_checkpoint_is_one_line_naming_it_and_changes_nothing(good_run, tmp_path, kind):
    make, message = BAD_CKPT[kind]
    marker, ckpt = tmp_path / "PAYLOAD_RAN", tmp_path / "bad.pt"
    make(good_run / "run.pt", ckpt, marker)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, *TINY, "--ckpt", ckpt,
                "--resume", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    r = run_cli("visualize.py", "--ckpt", ckpt, "--out", tmp_path / "figs", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    assert files(tmp_path) == before
    assert not marker.exists(), "the checkpoint's code ran"
    if kind == "code":  # the payload is real: an unsafe load would have run it
        pickle.loads(pickle.dumps(Payload(marker)))
        assert marker.exists()


@pytest.mark.parametrize("width", [16, 64])
def test_each_shipped_network_loads_is_reported_and_cannot_be_resumed(tmp_path, width):
    shipped = REPO / "docs" / f"resnet18-w{width}.pt"
    ckpt, model = train.load(shipped)
    assert (model.name, ckpt["iteration"]) == (f"ResNet-18, width {width}", 50000)
    r = run_cli("visualize.py", "--ckpt", shipped, "--figures", 1, 2, "--out", ".", cwd=tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert r.returncode == 0 and "(the study's measure) |" + " not recorded |" * 5 in report
    r = run_cli("train.py", "--resume", "--ckpt", shipped, cwd=tmp_path)
    assert_one_line_error(r, f"{shipped.name} holds a network's weights, not a run to resume")


# --- 3, 4. A resume changes only what is ahead; a fresh run never overwrites -------------------

@pytest.mark.parametrize("flags,message", [
    (("--resume", "--width", 16), "run.pt was trained with --width 8"),
    (("--resume", "--lr", 0.05), "trained with --lr 0.1"),
    (("--resume", "--eval-every", 3), "trained with --eval-every 5"),
    (("--resume", "--amp"), "trained with --amp False"),
    (("--resume", "--iters", 10), "run.pt has run 10 of its 10 iterations"),
    (("--resume", "--iters", 20, "--lr-drops", 5), "--lr-drops may change only what is ahead"),
    (("--resume", "--iters", 20, "--data", "other"), "run.pt was trained on other data"),
    ((), "run.pt exists: continue it with `python "),
    (("--ckpt", "nodir/run.pt"), "--ckpt nodir/run.pt: the folder nodir does not exist")])
def test_a_run_that_would_change_or_overwrite_a_checkpoint_is_refused(good_run, tmp_path, flags,
                                                                      message):
    (tmp_path / "run.pt").write_bytes((good_run / "run.pt").read_bytes())
    make_cifar(tmp_path / "other", seed=1)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", good_run / "data", *TINY, *flags, cwd=tmp_path)
    assert_one_line_error(r, message)
    assert files(tmp_path) == before


# --- 5. Bad flags and bad data: one line naming the flag or the file -------------------------

@pytest.mark.parametrize("flags,message", [
    (("--iters", 0), "--iters: must be an integer of at least 1, got 0"),
    (("--batch", "x"), "--batch: invalid integer value: 'x'"),
    (("--lr", "nan"), "--lr nan must be above 0"),
    (("--momentum", 1), "--momentum 1.0 from 0 to below 1"),
    (("--wd", -1), "--wd -1.0 at least 0"),
    (("--width", 4), "--width: must be an integer of at least 8, got 4"),
    (("--depth", 50), "--depth: invalid choice: 50"),
    (("--device", "cuda:7"), "--device: cuda:7: not a device of this machine")])
def test_a_nonsense_flag_is_named_with_its_value_by_the_parser(capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        train.get_args(list(map(str, flags)))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage:")
    assert message in err.strip().splitlines()[-1], err


def set_bytes(f, change):
    f.write_bytes(change(f.read_bytes()))


BAD_DATA = {  # how the data is broken: (how to make it so, the words of the error)
    "truncated": (lambda d: set_bytes(d / "data_batch_3.bin", lambda b: b[:-100]),
                  "data_batch_3.bin: 49,068 bytes"),
    "empty": (lambda d: (d / "data_batch_3.bin").write_bytes(b""), "data_batch_3.bin: 0 bytes"),
    "bad label": (lambda d: set_bytes(d / "data_batch_3.bin",
                                      lambda b: b[:6146] + b"\xc8" + b[6147:]),
                  "data_batch_3.bin: record 2 has label 200, expected 0-9"),
    "missing": (lambda d: (d / "data_batch_2.bin").unlink(),
                "missing data_batch_2.bin. Get CIFAR-10 with `python cifar.py"),
    "a folder": (lambda d: ((d / "test_batch.bin").unlink(), (d / "test_batch.bin").mkdir()),
                 "Is a directory"),
}


@pytest.mark.parametrize("how", BAD_DATA)
def test_bad_data_is_named_and_nothing_is_written(tiny_data, tmp_path, how):
    make, message = BAD_DATA[how]
    make(tiny_data)
    for script, flags in (("train.py", ("--data", tiny_data, "--iters", 5, *TINY)),
                          ("cifar.py", (tiny_data,))):
        assert_one_line_error(run_cli(script, *flags, cwd=tmp_path), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("archive,message", [
    ("wrong md5", "cifar-10-binary.tar.gz: MD5 is"),
    ("a member outside", "cifar-10-binary.tar.gz: could not extract it"),
    ("a link out", "cifar-10-binary.tar.gz: could not extract it"),
    ("offline", "and http://127.0.0.1:9/cifar-10-binary.tar.gz could not be downloaded")])
def test_a_bad_archive_or_no_network_is_named_and_leaves_nothing(tmp_path, monkeypatch, archive,
                                                                 message):
    data, tgz = tmp_path / "data", tmp_path / "data" / "cifar-10-binary.tar.gz"
    data.mkdir()
    if archive == "offline":
        inject.offline(monkeypatch.setattr)
    else:
        member = {"a member outside": ("../escaped.bin", tarfile.REGTYPE),
                  "a link out": (f"{cifar.FOLDER}/evil", tarfile.SYMTYPE)}.get(archive)
        md5 = tgz_of(make_cifar(tmp_path / "src"), tgz, member)
        if archive != "wrong md5":
            monkeypatch.setattr(cifar.download_cifar10, "__defaults__", (cifar.URL, md5))
    before = files(data)
    r = run_cli("train.py", "--data", data, "--iters", 5, "--width", 8, "--device", "cpu",
                cwd=tmp_path)
    assert_one_line_error(r, message)
    assert files(data) == before and not (tmp_path / "escaped.bin").exists()


# --- 6. visualize.py: the test images it draws ------------------------------------------------

def test_visualize_warns_of_other_test_images_and_refuses_figures_without_any(good_run,
                                                                               tmp_path):
    ckpt = torch.load(good_run / "run.pt", weights_only=True)
    ckpt["args"]["data"] = str(tmp_path / "gone")
    torch.save(ckpt, tmp_path / "moved.pt")
    r = run_cli("visualize.py", "--ckpt", "moved.pt", "--out", "figs", "--figures", "localize",
                cwd=tmp_path)
    assert_one_line_error(r, "need test images", "has none: pass --data")
    r = run_cli("visualize.py", "--ckpt", "moved.pt", "--out", "figs", "--figures", 1, 2,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    make_cifar(tmp_path / "other", seed=1)
    r = run_cli("visualize.py", "--ckpt", "moved.pt", "--data", "other", "--out", "figs",
                "--figures", 3, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("warning: the test images in other are not the ones moved.pt")
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", "ok", "--figures", 3,
                cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.parametrize("flags,message", [
    (("--image", 32), "--image 32: give a test image's index, 0 to 31, or the name of a class"),
    (("--image", "dragon"), "--image dragon: give a test image's index"),
    (("--top9", "fc:1"), "--top9 fc:1: expected LAYER:CHANNEL"),
    (("--top9", "conv1:99"), "and CHANNEL below its channels, [8, 8, 16, 32, 64]"),
    (("--compare", "missing.pt"), "missing.pt: no such checkpoint"),
    (("--sanity", -1), "--sanity: must be an integer of at least 0, got -1")])
def test_visualize_checks_its_flags_before_drawing(good_run, tmp_path, flags, message):
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data",
                *flags, "--out", tmp_path / "figs", cwd=tmp_path)
    assert_one_line_error(r, message)
    assert not (tmp_path / "figs").exists()

"""Bad input and injected faults: one true line and a non-zero exit, and no file lost or mixed.

The scripts run in this process as their `__main__` blocks run them (conftest.run_cli), so one
process checks every case; the faults that need a hand inside the run (a full disk, a diverging
run, no network) are the named helpers of tests/inject.py, patched in with monkeypatch. The
cases that need a process of their own (signals, SIGKILL, stdout, two runs) are in
test_process.py.
"""
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


# --- Bad data ------------------------------------------------------------------------------

def corrupt(f, how):
    if how == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif how == "extra bytes":
        f.write_bytes(f.read_bytes() + b"\0" * 7)
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "bad label":
        data = bytearray(f.read_bytes())
        data[3073 * 2] = 200
        f.write_bytes(bytes(data))
    elif how == "a folder":
        f.unlink()
        f.mkdir()
    elif how == "a FIFO":
        f.unlink()
        os.mkfifo(f)
    elif how == "/dev/zero":
        f.unlink()
        f.symlink_to("/dev/zero")
    elif how == "too large":
        with open(f, "r+b") as out:
            out.truncate(cifar.RECORD_BYTES * (cifar.MAX_RECORDS + 1))


@pytest.mark.parametrize("how,message", [
    ("truncated", "not a whole number of 3073-byte records"),
    ("a folder", "a folder, where a CIFAR-10 batch file should be"),
    ("a FIFO", "not a regular file"),
    ("/dev/zero", "not a regular file")])
def test_a_bad_batch_file_is_named(tiny_data, tmp_path, how, message):
    f = tiny_data / "data_batch_3.bin"
    corrupt(f, how)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, cwd=tmp_path, timeout=60)
    assert_one_line_error(r, message, str(f))
    assert not (tmp_path / "run.pt").exists()


@pytest.mark.parametrize("how,message", [
    ("extra bytes", "not a whole number"),
    ("empty", "empty file"),
    ("bad label", "record 2 has label 200"),
    ("too large", "more than all of CIFAR-10")])
def test_a_bad_batch_file_is_refused_by_the_reader(tiny_data, how, message):
    f = tiny_data / "data_batch_3.bin"
    corrupt(f, how)
    with pytest.raises(ValueError, match=message):
        cifar.read_batch(f)


@pytest.mark.parametrize("state", ["missing", "empty", "partial"])
def test_missing_data_is_named(tmp_path, state):
    data = tmp_path / "data"
    if state != "missing":
        data.mkdir()
    if state == "partial":
        make_cifar(data)
        (data / "data_batch_2.bin").unlink()
        (data / "test_batch.bin").unlink()
    r = run_cli("train.py", "--data", data, "--iters", 5, *TINY, cwd=tmp_path)
    missing = "data_batch_2.bin" if state == "partial" else "data_batch_1.bin"
    assert_one_line_error(r, "missing", missing, cifar.URL)


def test_partial_data_is_never_overwritten_by_a_download(tmp_path):
    data = make_cifar(tmp_path / "data")
    (data / "data_batch_5.bin").unlink()
    before = files(data)
    r = run_cli("train.py", "--data", data, "--iters", 5, "--width", 8, "--device", "cpu",
                cwd=tmp_path)
    assert_one_line_error(r, "missing data_batch_5.bin")
    assert files(data) == before


def test_an_unreadable_file_is_named(tiny_data, tmp_path, monkeypatch):
    inject.unreadable_test_batch(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, cwd=tmp_path)
    assert_one_line_error(r, "Permission denied", str(tiny_data / "test_batch.bin"))


@pytest.mark.parametrize("archive", ["wrong md5", "truncated", "a folder"])
def test_a_bad_archive_in_the_data_folder_is_kept_and_named(tmp_path, archive):
    data = tmp_path / "data"
    data.mkdir()
    tgz = data / "cifar-10-binary.tar.gz"
    if archive == "a folder":
        tgz.mkdir()
    else:
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(make_cifar(tmp_path / "src"), arcname=cifar.FOLDER)
        if archive == "truncated":
            tgz.write_bytes(tgz.read_bytes()[:len(tgz.read_bytes()) // 2])
    r = run_cli("train.py", "--data", data, "--iters", 5, "--width", 8, "--device", "cpu",
                cwd=tmp_path)
    if archive == "a folder":
        assert_one_line_error(r, str(tgz), "not a file")
    else:
        assert_one_line_error(r, "MD5 is", cifar.MD5, "delete it and try again")
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_truncated_archive_with_matching_md5_is_refused(tmp_path):
    import hashlib
    tgz = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(make_cifar(tmp_path / "src"), arcname=cifar.FOLDER)
    tgz.write_bytes(tgz.read_bytes()[:5000])
    md5 = hashlib.md5(tgz.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="could not extract it"):
        cifar.download_cifar10(tmp_path / "data", url=tgz.as_uri(), md5=md5)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_mistyped_data_folder_says_no_files_then_the_download_and_creates_nothing(
        tmp_path, monkeypatch):
    inject.offline(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tmp_path / "typo", "--iters", 5, "--width", 8, "--device",
                "cpu", cwd=tmp_path)
    assert_one_line_error(r, f"no CIFAR-10 files in {tmp_path / 'typo'}, so a download was "
                             f"tried: could not download http://127.0.0.1:9/")
    assert not (tmp_path / "typo").exists()


def test_data_that_is_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "data").write_text("not a folder\n")
    r = run_cli("train.py", "--data", tmp_path / "data", "--iters", 5, *TINY, cwd=tmp_path)
    assert_one_line_error(r, f"--data {tmp_path / 'data'}: a file, not a folder")


# --- Bad flags -----------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (("--iters", 0), "--iters: must be a positive integer, got '0'"),
    (("--iters", -5), "--iters: must be a positive integer"),
    (("--batch", 0), "--batch: must be a positive integer"),
    (("--iters", 100, "--lr-drops", 100), "--lr-drops 100 must all be below --iters 100"),
    (("--lr-drops", 2, 2), "--lr-drops 2 2: an iteration given twice"),
    (("--eval-every", -1), "--eval-every: must be 0 or more, got '-1'"),
    (("--lr", -1), "--lr: must be a number from 0 to 3.4e38, got '-1'"),
    (("--lr", 0), "--lr 0.0: must be above 0"),
    (("--lr", "nan"), "--lr: must be a number from 0 to 3.4e38, got 'nan'"),
    (("--lr", "1e39"), "--lr: must be a number from 0 to 3.4e38, got '1e39'"),
    (("--wd", "inf"), "--wd: must be a number from 0 to 3.4e38, got 'inf'"),
    (("--wd", "1e308"), "--wd: must be a number from 0 to 3.4e38, got '1e308'"),
    (("--wd", -1), "--wd: must be a number from 0 to 3.4e38, got '-1'"),
    (("--momentum", 1), "--momentum 1.0: must be from 0 up to"),
    (("--iters", "²"), "--iters: must be a positive integer, got '²'"),
    (("--lr-drops", *range(1, 352)), "--lr-drops: 351 drops would divide the rate by 10**351"),
    (("--seed", 2**64), "--seed: must be an integer from 0 to 2**64 - 1"),
    (("--seed", -1), "--seed: must be an integer from 0"),
    (("--width", 4), "--width: must be an integer of at least 8, got '4'"),
    (("--depth", 50), "--depth: invalid choice: 50"),
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
    (("--width", 100000), "--width 100000: ResNet-18 would have"),
])
def test_a_nonsense_flag_is_named_with_its_value(tiny_data, tmp_path, flags, message):
    if flags[:2] == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, "--width", 8, "--no-download",
                *flags, cwd=tmp_path)
    assert_one_line_error(r, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- The checkpoint's place ------------------------------------------------------------------

@pytest.mark.parametrize("ckpt,message", [
    ("nodir/run.pt", "the folder nodir does not exist"),
    ("results.csv", "--ckpt results.csv: a checkpoint's name ends in .pt"),
    ("folder", "--ckpt folder is a folder: give a file name"),
    ("sib.pt", "its history file sib.csv is a folder")])
def test_a_checkpoint_that_could_not_be_saved_is_refused_before_training(tiny_data, tmp_path,
                                                                         ckpt, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "sib.csv").mkdir()
    for resume in ([], ["--resume"]):  # the same message either way
        r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, "--ckpt", ckpt, *resume,
                    cwd=tmp_path)
        assert_one_line_error(r, message)
        assert "it " not in r.stdout  # no training started


def test_an_unwritable_folder_is_refused_before_training(tiny_data, tmp_path, monkeypatch):
    inject.unwritable_folders(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, cwd=tmp_path)
    assert_one_line_error(r, "--ckpt run.pt: cannot write in .", "Permission denied")
    assert "it " not in r.stdout


@pytest.mark.parametrize("name", [".run.pt.tmp", "run.pt.tmp", "run.csv.tmp", ".run.csv.tmp"])
def test_a_planted_symlink_at_a_temporary_name_is_never_written_through(tiny_data, tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / name).symlink_to(victim)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 10, "--eval-every", 5, *TINY,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "precious\n" and (tmp_path / name).is_symlink()
    checkpoint.load_valid(tmp_path / "run.pt", resume=True)


def test_a_planted_symlink_at_the_lock_is_refused(tiny_data, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "run.pt.lock").symlink_to(victim)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 10, *TINY, cwd=tmp_path)
    assert_one_line_error(r, "run.pt.lock: cannot open the lock file")
    assert victim.read_text() == "precious\n"


# --- Bad checkpoints -------------------------------------------------------------------------

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


def unreadable(kind, good, path, marker):
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    elif kind == "a CSV":
        path.write_text("iteration,lr,train_loss\n5,0.1,2.3\n")
    elif kind == "a PNG":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "code (torch.save)":
        ckpt = torch.load(good, weights_only=True)
        ckpt["args"]["evil"] = Payload(marker)
        torch.save(ckpt, path)
    elif kind == "code (raw pickle)":
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))


@pytest.mark.parametrize("kind,message", [
    ("truncated", "the checkpoint is truncated or corrupt"),
    ("a CSV", "not a checkpoint (train.py writes torch.save files"),
    ("a PNG", "not a checkpoint"),
    ("empty", "an empty file, not a checkpoint"),
    ("code (torch.save)", "refused: it holds Python objects (posix.system), and loading them "
                          "could run code"),
    ("code (raw pickle)", "not a checkpoint (train.py writes torch.save files")])
def test_an_unreadable_checkpoint_is_refused_with_a_true_reason(good_run, tmp_path, kind, message):
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = tmp_path / "bad.pt"
    unreadable(kind, good_run / "run.pt", ckpt, marker)
    before = files(tmp_path)
    r = run_cli("visualize.py", "--ckpt", ckpt, "--out", tmp_path / "figs", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, *TINY, "--ckpt", ckpt,
                "--resume", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    assert not marker.exists(), "the checkpoint's code ran"
    assert files(tmp_path) == before
    if kind.startswith("code"):  # the payload is real: an unsafe load would have run it
        pickle.loads(pickle.dumps(Payload(marker)))
        assert marker.exists()


def nan_first(tensors):
    t = next(iter(tensors.values())) if isinstance(tensors, dict) else tensors[0]
    t[(0,) * t.dim()] = float("nan")


MALFORMED = {  # field: [(what is wrong, how to make it so, a fragment of the error)]
    "model": [
        ("None", lambda c: c.update(model=None), "model is NoneType, not a dict"),
        ("int64 weights", lambda c: c["model"].update(
            {k: v.long() for k, v in c["model"].items()}), "not a floating-point tensor"),
        ("a missing tensor", lambda c: c["model"].pop("fc.bias"), "missing fc.bias"),
        ("a wrong shape", lambda c: c["model"].update({"fc.bias": torch.zeros(11)}),
         "model[fc.bias] has shape (11,), but ResNet-18, width 8 needs (10,)"),
        ("NaN", lambda c: nan_first(c["model"]), "holds NaN or infinity"),
    ],
    "iteration": [
        ("fractional", lambda c: c.update(iteration=2.5), "iteration is 2.5, not an integer"),
        ("negative", lambda c: c.update(iteration=-1), "iteration is -1"),
        ("past --iters", lambda c: c.update(iteration=11), "iteration is 11"),
    ],
    "history": [
        ("not a list", lambda c: c.update(history="rows"), "history is a str, not a list"),
        ("a row without keys", lambda c: c["history"][0].pop("test_acc"),
         "history[0] is not a row"),
        ("a text value", lambda c: c["history"][0].update(lr="0.1"), "history[0].lr is '0.1'"),
        ("a NaN value", lambda c: c["history"][1].update(test_loss=float("nan")),
         "history[1].test_loss is nan"),
        ("iteration 10**9", lambda c: c["history"][1].update(iteration=10**9),
         "history[1].iteration is 1000000000"),
        ("iterations not increasing", lambda c: c["history"][1].update(iteration=5),
         "iterations must increase"),
    ],
    "args": [
        ("not a dict", lambda c: c.update(args=[1]), "args is a list, not a dict"),
        ("a text width", lambda c: c["args"].update(width="8"),
         "args.width is '8', not a positive integer"),
        ("a huge width", lambda c: c["args"].update(width=3000), "--width 3000: ResNet-18 would"),
        ("another width", lambda c: c["args"].update(width=16),
         "but ResNet-18, width 16 needs"),
        ("depth 50", lambda c: c["args"].update(depth=50), "args.depth is 50, not a depth of 18"),
        ("no lr_drops", lambda c: c["args"].pop("lr_drops"), "args lacks lr_drops"),
    ],
}
MALFORMED_FOR_RESUME = {  # read only by a resumed run
    "momentum": [
        ("too few", lambda c: c["momentum"].pop(), "momentum is not a list of"),
        ("a wrong shape", lambda c: c["momentum"].__setitem__(0, torch.zeros(2)),
         "momentum[0] has shape (2,)"),
        ("NaN", lambda c: nan_first(c["momentum"]), "momentum[0] holds NaN"),
    ],
    "loader": [
        ("position -1000", lambda c: c["loader"].update(pos=-1000), "loader.pos is -1000"),
        ("not a permutation", lambda c: c["loader"]["order"].fill_(0),
         "loader.order is not a permutation"),
        ("no generator", lambda c: c["loader"].update(generator=None),
         "loader.generator is not a generator state"),
    ],
    "data_fingerprint": [
        ("a number", lambda c: c.update(data_fingerprint=5), "data_fingerprint is not a string"),
    ],
}


def cases(table, only=None):
    """pytest cases of a table; `only`: the (field, what) pairs to take, by name."""
    return [pytest.param(field, make, message, id=f"{field}: {what}")
            for field, rows in table.items() for what, make, message in rows
            if only is None or (field, what) in only]


def malformed(good, path, make):
    ckpt = torch.load(good, weights_only=True)
    make(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("field,make,message", cases(MALFORMED) + cases(MALFORMED_FOR_RESUME))
def test_a_malformed_checkpoint_is_refused_by_validation(good_run, tmp_path, field, make, message):
    malformed(good_run / "run.pt", tmp_path / "bad.pt", make)
    with pytest.raises(ValueError) as refused:
        checkpoint.load_valid(tmp_path / "bad.pt", resume=True)
    assert str(refused.value).startswith(f"{tmp_path / 'bad.pt'}: not a valid checkpoint: ")
    assert message in str(refused.value)


# Through the scripts: one case of each field, the whole CLI path (exit, one line, files kept).
@pytest.mark.parametrize("field,make,message", cases(MALFORMED, {
    ("model", "None"), ("iteration", "fractional"), ("history", "not a list"),
    ("args", "not a dict")}) + cases(MALFORMED_FOR_RESUME, {
        ("momentum", "too few"), ("loader", "position -1000"),
        ("data_fingerprint", "a number")}))
def test_a_malformed_checkpoint_is_refused_by_resume(good_run, tmp_path, field, make, message):
    malformed(good_run / "run.pt", tmp_path / "bad.pt", make)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, *TINY, "--ckpt", "bad.pt",
                "--resume", cwd=tmp_path, timeout=60)
    assert_one_line_error(r, "bad.pt", message)
    assert files(tmp_path) == before


@pytest.mark.parametrize("field,make,message", cases(MALFORMED, {
    ("model", "None"), ("model", "NaN"), ("iteration", "fractional"),
    ("history", "iteration 10**9"), ("args", "a huge width")}))
def test_a_malformed_checkpoint_is_refused_by_visualize(good_run, tmp_path, field, make, message):
    malformed(good_run / "run.pt", tmp_path / "bad.pt", make)
    before = files(tmp_path)
    r = run_cli("visualize.py", "--ckpt", "bad.pt", "--out", "figs", cwd=tmp_path, timeout=60)
    assert_one_line_error(r, "bad.pt", message)
    assert files(tmp_path) == before


@pytest.mark.parametrize("flags,message", [
    (("--width", 16), "trained with --width 8; --width 16 would change its 10 iterations run"),
    (("--amp",), "trained with --amp False; --amp True would change"),
    (("--depth", 34), "trained with --depth 18; --depth 34 would change"),
    (("--plain",), "trained with --plain False; --plain True would change")])
def test_a_resume_that_would_change_the_run_is_refused(good_run, tmp_path, flags, message):
    (tmp_path / "run.pt").write_bytes((good_run / "run.pt").read_bytes())
    before = files(tmp_path)
    args = ["--data", good_run / "data", "--iters", 20, "--eval-every", 5, *TINY, *flags]
    r = run_cli("train.py", *args, "--resume", cwd=tmp_path)
    assert_one_line_error(r, message)
    r = run_cli("train.py", *args, cwd=tmp_path)  # without --resume: no hint to use it
    assert_one_line_error(r, "run.pt exists and is another run (it was trained with",
                          "pick another --ckpt")
    assert "--resume" not in r.stderr
    assert files(tmp_path) == before


def test_a_resume_on_other_data_is_refused(good_run, tmp_path):
    (tmp_path / "run.pt").write_bytes((good_run / "run.pt").read_bytes())
    other = make_cifar(tmp_path / "other", seed=1)
    before = files(tmp_path)
    r = run_cli("train.py", "--data", other, "--iters", 20, *TINY, "--resume", cwd=tmp_path)
    assert_one_line_error(r, "was trained on other data", str(other))
    assert files(tmp_path) == before


def test_an_existing_checkpoint_of_the_same_run_suggests_resume(good_run):
    before = files(good_run)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, "--eval-every", 5, *TINY,
                cwd=good_run)
    assert_one_line_error(r, "run.pt exists: continue it with `python", "--resume --ckpt run.pt`")
    assert files(good_run) == before


def test_visualize_checks_its_flags_before_writing_a_figure(good_run, tmp_path):
    for flags, message in ((("--image", 32), "--image 32: the test set"),
                           (("--image", "dragon"), "--image dragon: give an index or a class"),
                           (("--image", "²"), "--image ²: give an index or a class"),
                           (("--top9", "fc:1"), "--top9 fc:1: expected LAYER:CHANNEL"),
                           (("--top9", "conv1:99"), "conv1 has 8 channels, no channel 99"),
                           (("--compare", "missing.pt"), "missing.pt: no such checkpoint file"),
                           (("--compare", "README.md"), "README.md: not a checkpoint")):
        (tmp_path / "README.md").write_text("# not a checkpoint\n")
        r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data",
                    *flags, "--out", tmp_path / "figs", cwd=tmp_path)
        assert_one_line_error(r, message)
        assert not (tmp_path / "figs").exists()


# --- Faults during a run -----------------------------------------------------------------

def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    inject.disk_full_at_second_save(monkeypatch.setattr)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 20, "--eval-every", 5, *TINY,
                cwd=tmp_path)
    assert_one_line_error(r, "could not write run.pt", "No space left on device",
                          "the previous file, if any, is intact")
    assert checkpoint.load_valid(tmp_path / "run.pt", resume=True)[0]["iteration"] == 5
    assert not list(tmp_path.glob(".*.tmp")), "the partial temporary file is left"


def test_nan_loss_stops_and_says_which_checkpoint_is_kept(tiny_data, tmp_path, monkeypatch):
    args = ("--data", tiny_data, "--iters", 20, "--eval-every", 5, *TINY)
    inject.nan_at_step_7(monkeypatch.setattr)
    r = run_cli("train.py", *args, cwd=tmp_path)
    assert_one_line_error(r, "became nan by iteration 10", "run.pt still holds iteration 5")
    assert checkpoint.load_valid(tmp_path / "run.pt", resume=True)[0]["iteration"] == 5
    monkeypatch.undo()
    r = run_cli("train.py", *args, "--lr", 1e12, "--ckpt", "absurd.pt", cwd=tmp_path)
    assert_one_line_error(r, "training diverged", "no checkpoint was written")
    assert not (tmp_path / "absurd.pt").exists()


# --- Nothing the user owns is touched (one test per class) ---------------------------------------

def test_a_fresh_run_never_overwrites_a_history_file(tiny_data, tmp_path):
    (tmp_path / "results.csv").write_text("my,precious\n")
    before = files(tmp_path)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, "--ckpt", "results.pt",
                cwd=tmp_path)
    assert_one_line_error(r, "results.csv exists, and the run would write its history there")
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, "--ckpt", "exp",
                cwd=tmp_path)
    assert_one_line_error(r, "--ckpt exp: a checkpoint's name ends in .pt")
    assert files(tmp_path) == before


def test_the_lock_is_never_a_users_file(tiny_data, tmp_path):
    (tmp_path / "uv.pt.lock").write_text("version = 1\n")
    before = files(tmp_path)
    for ckpt, message in (("uv", "--ckpt uv: a checkpoint's name ends in .pt"),
                          ("uv.pt", "uv.pt.lock exists and is not a lock of train.py; it was "
                                    "left alone")):
        r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, "--ckpt", ckpt,
                    cwd=tmp_path)
        assert_one_line_error(r, message)
    assert files(tmp_path) == before


def test_a_lock_left_by_a_killed_run_is_taken_and_removed(tiny_data, tmp_path):
    (tmp_path / "run.pt.lock").write_bytes(checkpoint.LOCK_TAG + b"12345\n")
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run.pt.lock").exists()


def test_visualize_never_writes_through_a_link_or_over_a_checkpoint(good_run, tmp_path):
    (tmp_path / "victim.txt").write_text("precious\n")
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "fig2_conv1_filters.png").symlink_to(tmp_path / "victim.txt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fig1_learning_curve.png").write_bytes((good_run / "run.pt").read_bytes())
    before = files(tmp_path)
    for out in ("figs", "out"):
        r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", out, "--figures", 1,
                    2, cwd=tmp_path)
        assert_one_line_error(r, "exists and is not a PNG figure; it was left alone")
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


# --- No failure to write loses work ---------------------------------------------------------------

def test_a_stop_after_the_loss_became_nan_keeps_the_last_good_checkpoint(tiny_data, tmp_path,
                                                                         monkeypatch):
    inject.nan_at_step_7(monkeypatch.setattr)
    real, steps = train.train_step, []

    def step(*args, **kwargs):  # SIGTERM at the 8th step, after the NaN of the 7th
        steps.append(1)
        if len(steps) == 8:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", step)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 20, "--eval-every", 5, *TINY,
                cwd=tmp_path)
    assert_one_line_error(r, "the weights became NaN or infinite by iteration 8",
                          "run.pt still holds iteration 5")
    assert checkpoint.load_valid(tmp_path / "run.pt", resume=True)[0]["iteration"] == 5


# --- The data a figure claims ---------------------------------------------------------------------

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


# --- Smaller: one line instead of a traceback or a wrong word -------------------------------------

def test_ctrl_c_in_a_download_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(url, path):
        path.write_bytes(b"8 MB of a download")
        raise KeyboardInterrupt
    monkeypatch.setattr(cifar, "fetch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cifar.load_or_download(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(KeyboardInterrupt):
        cifar.load_or_download(tmp_path / "old")
    assert list((tmp_path / "old").iterdir()) == []


def test_a_stalled_download_times_out_on_a_line_of_its_own(tmp_path, capsys):
    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:  # the client gave up: what the test waits for
                pass

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TimeoutError, match="under 1 kB/s for 0.3 s"):
            cifar.fetch(f"http://127.0.0.1:{server.server_port}/c.tar.gz", tmp_path / "c.part",
                        stall=0.3, min_rate=1000)
    finally:
        server.shutdown()
    assert capsys.readouterr().err.endswith("\n")  # the error starts on a line of its own


def test_ctrl_c_in_visualize_is_one_line(good_run, tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(visualize, "fig2_conv1_filters", interrupted)
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--out", "figs", cwd=tmp_path)
    assert_one_line_error(r, "interrupted; nothing partial was written")


def test_compare_labels_runs_by_what_differs_and_refuses_a_run_twice(good_run, tmp_path):
    run = torch.load(good_run / "run.pt", weights_only=True)["args"]
    other = {**run, "lr": 0.05}
    assert visualize.labels(["a.pt", "b.pt"], [run, other]) == ["ResNet-18, width 8, lr 0.1",
                                                                "ResNet-18, width 8, lr 0.05"]
    assert visualize.labels(["a.pt", "b.pt"], [run, run]) == ["ResNet-18, width 8 (a.pt)",
                                                              "ResNet-18, width 8 (b.pt)"]
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--compare", good_run / "run.pt",
                "--out", "figs", cwd=tmp_path)
    assert_one_line_error(r, "is given twice")


def test_weights_without_the_state_to_resume_are_drawn_but_not_resumed(good_run, tmp_path):
    ckpt = torch.load(good_run / "run.pt", weights_only=True)
    del ckpt["momentum"], ckpt["loader"]  # as docs/resnet18-w16.pt is shipped
    torch.save(ckpt, tmp_path / "weights.pt")
    before = files(tmp_path)
    r = run_cli("train.py", "--resume", "--ckpt", "weights.pt", cwd=tmp_path)
    assert_one_line_error(r, "weights.pt holds the weights of a run, not the state to resume it")
    assert files(tmp_path) == before
    r = run_cli("visualize.py", "--ckpt", "weights.pt", "--out", "figs", "--figures", 1, 2,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr

"""Bad input and injected faults: one clear line and a non-zero exit, and no run ever lost.

The CLI cases run train.py and visualize.py as a user does (subprocesses); the faults that need
a hand inside the process (a full disk, a kill in the middle of a save, a diverging run) run
the real script through a small wrapper that patches one function first.
"""
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import cifar
import train
from conftest import REPO, make_cifar, run_cli, write_batch

TINY = ("--width", 4, "--batch", 8, "--no-download", "--device", "cpu")
RUN = ("--iters", 400, "--eval-every", 20, "--lr-drops", 300, *TINY)  # long enough to be killed mid-way


def assert_one_line_error(r, *fragments):
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    ours = len(lines) == 1 and lines[0].startswith("error: ")
    argparse = lines[0].startswith("usage:") and all(ln.startswith(" ") for ln in lines[1:-1]) and ": error: " in lines[-1]
    assert ours or argparse, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def wrapped(script, patch, *args, cwd, popen=False):
    """Run `script` as __main__ after executing `patch` (Python source) in the same process."""
    code = f"import runpy, sys; sys.path.insert(0, {str(REPO)!r})\n{patch}\n" \
           f"sys.argv = [{str(REPO / script)!r}] + sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    cmd = [sys.executable, "-c", code, *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# --- Bad data ---------------------------------------------------------------------------------

def corrupt(folder, how):
    f = folder / "data_batch_3.bin"
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
    elif how == "directory":
        f.unlink()
        f.mkdir()
    return f


@pytest.mark.parametrize("how,message", [
    ("truncated", "not a whole number of 3073-byte records"), ("extra bytes", "not a whole number"),
    ("empty", "empty file"), ("bad label", "record 2 has label 200"), ("directory", "Is a directory")])
def test_corrupt_batch_file(tiny_data, tmp_path, how, message):
    f = corrupt(tiny_data, how)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 5, "--lr-drops", *TINY, cwd=tmp_path)
    assert_one_line_error(r, message, str(f))
    assert not (tmp_path / "run.pt").exists()


@pytest.mark.parametrize("state", ["missing", "empty", "partial"])
def test_missing_data(tmp_path, state):
    data = tmp_path / "data"
    if state != "missing":
        data.mkdir()
    if state == "partial":
        make_cifar(data)
        (data / "data_batch_2.bin").unlink()
        (data / "test_batch.bin").unlink()
    r = run_cli("train.py", "--data", data, "--iters", 5, "--lr-drops", *TINY, cwd=tmp_path)
    assert_one_line_error(r, "missing", "data_batch_2.bin" if state == "partial" else "data_batch_1.bin", cifar.URL)
    r = run_cli("visualize.py", "--ckpt", tmp_path / "none.pt", "--data", data, cwd=tmp_path)
    assert_one_line_error(r, "none.pt: no such checkpoint file")


def test_partial_data_is_never_overwritten_by_a_download(tmp_path):
    data = make_cifar(tmp_path / "data")
    (data / "data_batch_5.bin").unlink()
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    r = run_cli("train.py", "--data", data, "--iters", 5, "--lr-drops", "--width", 4, "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(r, "missing data_batch_5.bin")
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_unreadable_file(tiny_data, tmp_path, monkeypatch):
    f = tiny_data / "test_batch.bin"
    if os.geteuid() != 0:
        f.chmod(0)
        r = run_cli("train.py", "--data", tiny_data, "--iters", 5, "--lr-drops", *TINY, cwd=tmp_path)
        assert_one_line_error(r, "Permission denied", str(f))
        return
    # root reads any file whatever its mode, so the refusal is injected where the file is read.
    r = wrapped("train.py", f"import pathlib\nreal = pathlib.Path.read_bytes\n"
                f"def read(p):\n    if p.name == 'test_batch.bin': raise PermissionError(13, 'Permission denied', str(p))\n"
                f"    return real(p)\npathlib.Path.read_bytes = read",
                "--data", tiny_data, "--iters", 5, "--lr-drops", *TINY, cwd=tmp_path)
    assert_one_line_error(r, "Permission denied", str(f))


@pytest.mark.parametrize("archive", ["wrong md5", "truncated"])
def test_bad_archive_in_the_data_folder(tmp_path, archive):
    data = tmp_path / "data"
    data.mkdir()
    src = make_cifar(tmp_path / "src")
    tgz = data / "cifar-10-binary.tar.gz"
    import tarfile
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, arcname=cifar.FOLDER)
    if archive == "truncated":
        tgz.write_bytes(tgz.read_bytes()[:len(tgz.read_bytes()) // 2])
    r = run_cli("train.py", "--data", data, "--iters", 5, "--lr-drops", "--width", 4, "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(r, "MD5 is", cifar.MD5, "delete it and try again")
    assert tgz.exists(), "a file the user put there is not deleted"
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_truncated_archive_with_matching_md5_is_refused(tmp_path):
    import hashlib
    import tarfile
    tgz = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(make_cifar(tmp_path / "src"), arcname=cifar.FOLDER)
    tgz.write_bytes(tgz.read_bytes()[:5000])
    with pytest.raises(ValueError, match="could not extract it"):
        cifar.download_cifar10(tmp_path / "data", url=tgz.as_uri(), md5=hashlib.md5(tgz.read_bytes()).hexdigest())
    assert list((tmp_path / "data").iterdir()) == []


def test_offline_download_error(tmp_path):
    r = wrapped("train.py", "import cifar\ncifar.URL = 'http://127.0.0.1:9/cifar-10-binary.tar.gz'\n"
                "cifar.download_cifar10.__defaults__ = (cifar.URL, cifar.MD5)",
                "--data", tmp_path / "data", "--iters", 5, "--lr-drops", "--width", 4, "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(r, "could not download http://127.0.0.1:9/cifar-10-binary.tar.gz", str(tmp_path / "data"))


# --- Bad flags ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,message", [
    (("--iters", 0), "--iters: must be a positive integer, got '0'"),
    (("--iters", -5), "--iters: must be a positive integer"),
    (("--batch", 0), "--batch: must be a positive integer"),
    (("--batch", 81), "batch size 81 must be between 1 and the 80 images"),
    (("--iters", 100, "--lr-drops", 100), "--lr-drops 100 must all be below --iters 100"),
    (("--device", "cuda"), "CUDA is not available"),
    (("--device", "tpu"), "not a device"),
    (("--eval-every", -1), "--eval-every must be 0 or more"),
    (("--lr", -0.1), "need --lr > 0"),
])
def test_nonsense_train_flags(tiny_data, tmp_path, flags, message):
    if flags[:2] == ("--device", "cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = ["--data", tiny_data, "--iters", 5, "--lr-drops", "--width", 4, "--no-download"]
    r = run_cli("train.py", *args, *flags, cwd=tmp_path)
    assert_one_line_error(r, message)
    assert not (tmp_path / "run.pt").exists()


# --- Bad checkpoints ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    make_cifar(folder / "data")
    r = run_cli("train.py", "--data", folder / "data", "--iters", 10, "--eval-every", 5, "--lr-drops", *TINY, cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoint(kind, good, path, marker):
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "not a checkpoint":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "missing keys":
        torch.save({"model": torch.load(good, weights_only=True)["model"]}, path)
    elif kind == "code (torch.save)":
        ckpt = torch.load(good, weights_only=True)
        ckpt["args"]["evil"] = Payload(marker)
        torch.save(ckpt, path)
    elif kind == "code (raw pickle)":
        path.write_bytes(pickle.dumps({"model": Payload(marker)}))


@pytest.mark.parametrize("kind,message", [
    ("truncated", "not a readable checkpoint"), ("not a checkpoint", "not a readable checkpoint"),
    ("missing keys", "missing iteration, history, args"), ("code (torch.save)", "not a readable checkpoint"),
    ("code (raw pickle)", "not a readable checkpoint")])
def test_bad_checkpoints_are_refused(good_run, tmp_path, kind, message):
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = tmp_path / "bad.pt"
    bad_checkpoint(kind, good_run / "run.pt", ckpt, marker)
    before = ckpt.read_bytes()
    r = run_cli("visualize.py", "--ckpt", ckpt, "--out", tmp_path / "figs", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 20, "--eval-every", 5, "--lr-drops", *TINY,
                "--ckpt", ckpt, "--resume", cwd=tmp_path)
    assert_one_line_error(r, str(ckpt), message)
    assert not marker.exists(), "the checkpoint's code ran"
    assert ckpt.read_bytes() == before, "a bad checkpoint is left as it was"
    if kind.startswith("code"):  # the payload is real: an unsafe load would have run it
        pickle.loads(pickle.dumps(Payload(marker)))
        assert marker.exists()


def test_resume_with_other_width_or_data(good_run, tmp_path):
    ckpt = tmp_path / "run.pt"
    ckpt.write_bytes((good_run / "run.pt").read_bytes())
    base = ("--iters", 20, "--eval-every", 5, "--lr-drops", "--batch", 8, "--no-download", "--device", "cpu", "--resume")
    r = run_cli("train.py", "--data", good_run / "data", "--width", 8, *base, cwd=tmp_path)
    assert_one_line_error(r, "trained with --width 4, but this run has --width 8")
    other = make_cifar(tmp_path / "other", seed=1)
    r = run_cli("train.py", "--data", other, "--width", 4, *base, cwd=tmp_path)
    assert_one_line_error(r, "was trained on other data", str(other))
    assert ckpt.read_bytes() == (good_run / "run.pt").read_bytes()


def test_existing_checkpoint_is_not_overwritten(good_run, tmp_path):
    before = (good_run / "run.pt").read_bytes()
    r = run_cli("train.py", "--data", good_run / "data", "--iters", 10, "--lr-drops", *TINY, cwd=good_run)
    assert_one_line_error(r, "run.pt exists: continue it with --resume")
    assert (good_run / "run.pt").read_bytes() == before


def test_visualize_bad_flags(good_run, tmp_path):
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data", "--image", 32,
                "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(r, "--image 32: the test set", "has images 0 to 31")
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data", "--top9", "fc:1",
                "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(r, "--top9 fc:1: expected LAYER:CHANNEL")
    r = run_cli("visualize.py", "--ckpt", good_run / "run.pt", "--data", good_run / "data", "--top9", "conv1:99",
                "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(r, "conv1 has 4 channels, no channel 99")


def test_visualize_checkpoint_with_wrong_shapes(good_run, tmp_path):
    ckpt = torch.load(good_run / "run.pt", weights_only=True)
    ckpt["args"]["width"] = 8
    torch.save(ckpt, tmp_path / "w.pt")
    r = run_cli("visualize.py", "--ckpt", tmp_path / "w.pt", "--out", tmp_path, cwd=tmp_path)
    assert_one_line_error(r, "do not fit ResNet18(width=8)", "size mismatch")


# --- Faults during a run -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal, bit for bit."""
    folder = tmp_path_factory.mktemp("reference")
    make_cifar(folder / "data")
    r = run_cli("train.py", "--data", folder / "data", *RUN, cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


def finish(folder, data, kills):
    """Resume (or start, if no checkpoint was left) until the run completes."""
    ckpt = folder / "run.pt"
    if ckpt.exists():
        loaded = train.load_checkpoint(ckpt)  # whatever was left behind loads
        assert loaded["iteration"] % 20 == 0 or kills == "signal"
    r = run_cli("train.py", "--data", data, *RUN, *(["--resume"] if ckpt.exists() else []), cwd=folder)
    assert r.returncode == 0, r.stderr


def assert_same_weights(a, b):
    wa, wb = (torch.load(p, weights_only=True) for p in (a, b))
    assert wa["iteration"] == wb["iteration"] == 400
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"]), "weights differ"
    assert all(torch.equal(x, y) for x, y in zip(wa["momentum"], wb["momentum"]))


def wait_for(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}: {proc.stderr.read()}")


@pytest.mark.parametrize("trial", range(4))
def test_sigkill_at_a_random_moment_loses_nothing(reference, tmp_path, trial):
    data = make_cifar(tmp_path / "data")
    cmd = [sys.executable, str(REPO / "train.py"), "--data", str(data), *map(str, RUN)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    wait_for(proc, "ResNet18")  # training is about to start
    time.sleep(random.Random(trial).uniform(0.0, 1.5))
    proc.kill()
    proc.communicate()
    finish(tmp_path, data, "kill")
    assert_same_weights(tmp_path / "run.pt", reference / "run.pt")


def test_sigkill_during_a_checkpoint_save(reference, tmp_path):
    data = make_cifar(tmp_path / "data")
    patch = ("import time, torch\nreal, calls = torch.save, []\n"
             "def save(obj, f):\n    calls.append(1)\n    if len(calls) < 3:\n        return real(obj, f)\n"
             "    f.write(b'PK\\x03\\x04 half a checkpoint'); f.flush(); print('SAVING', flush=True); time.sleep(60)\n"
             "torch.save = save")
    proc = wrapped("train.py", patch, "--data", data, *RUN, cwd=tmp_path, popen=True)
    wait_for(proc, "SAVING")
    proc.kill()
    proc.communicate()
    assert (tmp_path / "run.pt.tmp").exists(), "the kill landed inside the save"
    assert train.load_checkpoint(tmp_path / "run.pt")["iteration"] == 40  # the save before is intact
    finish(tmp_path, data, "kill")
    assert_same_weights(tmp_path / "run.pt", reference / "run.pt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_current_iteration_and_resumes_exactly(reference, tmp_path, sig):
    data = make_cifar(tmp_path / "data")
    cmd = [sys.executable, str(REPO / "train.py"), "--data", str(data), *map(str, RUN)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    wait_for(proc, "it ")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    it = train.load_checkpoint(tmp_path / "run.pt")["iteration"]
    assert f"{signal.Signals(sig).name}: stopped at iteration {it}" in out
    assert 100 <= it < 400
    finish(tmp_path, data, "signal")
    assert_same_weights(tmp_path / "run.pt", reference / "run.pt")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    patch = ("import errno, torch\nreal, calls = torch.save, []\n"
             "def save(obj, f):\n    calls.append(1)\n    if len(calls) < 2:\n        return real(obj, f)\n"
             "    f.write(b'partial'); raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "torch.save = save")
    r = wrapped("train.py", patch, "--data", tiny_data, "--iters", 20, "--eval-every", 5, "--lr-drops", *TINY, cwd=tmp_path)
    assert_one_line_error(r, "could not write run.pt", "No space left on device", "the previous file, if any, is intact")
    assert train.load_checkpoint(tmp_path / "run.pt")["iteration"] == 5
    assert not (tmp_path / "run.pt.tmp").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    # A run that diverges after its first checkpoint: the 7th training loss (and so every weight) turns NaN.
    patch = ("import math, torch.nn.functional as F\nreal, calls = F.cross_entropy, []\n"
             "def loss(*a, **k):\n    calls.append(1) if 'reduction' not in k else None\n"
             "    return real(*a, **k) * (math.nan if len(calls) == 7 and 'reduction' not in k else 1)\n"
             "F.cross_entropy = loss")
    args = ("--data", tiny_data, "--iters", 20, "--eval-every", 5, "--lr-drops", *TINY)
    r = wrapped("train.py", patch, *args, cwd=tmp_path)
    assert_one_line_error(r, "the loss became nan by iteration 10", "last good checkpoint (run.pt) is kept")
    ckpt = train.load_checkpoint(tmp_path / "run.pt")
    assert ckpt["iteration"] == 5 and all(t.isfinite().all() for t in ckpt["model"].values())
    # An absurd learning rate diverges at once: no checkpoint is written at all.
    r = run_cli("train.py", *args, "--lr", 1e12, "--ckpt", "absurd.pt", cwd=tmp_path)
    assert_one_line_error(r, "training diverged", "no checkpoint was written")
    assert not (tmp_path / "absurd.pt").exists()

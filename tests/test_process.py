"""What only a process shows: signals, SIGKILL, a file-size limit, each script's `__main__`."""
import resource
import shlex
import signal
import subprocess
import sys

import pytest
import torch

import train
from conftest import (ENV, REPO, TINY, assert_one_line_error, make_cifar, run_process,
                      same_weights, start_process, wait_for)

pytestmark = pytest.mark.slow
RUN = ("--iters", 400, "--eval-every", 20, "--lr-drops", 300, *TINY)  # long enough to kill


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run that every interrupted one equals, bit for bit (a process too)."""
    folder = tmp_path_factory.mktemp("reference")
    make_cifar(folder / "data")
    r = run_process("train.py", "--data", folder / "data", *RUN, cwd=folder)
    assert r.returncode == 0, r.stderr
    return folder


def assert_same_weights(a, b):
    wa, wb = (torch.load(p, weights_only=True) for p in (a, b))
    assert wa["iteration"] == wb["iteration"] == 400 and same_weights(a, b)
    assert wa["history"] == wb["history"]  # the study's train measure across the stop too
    assert all(torch.equal(x, y) for x, y in zip(wa["momentum"], wb["momentum"]))


# --- The CLI's wiring: one line, from a real process ------------------------------------------

@pytest.mark.parametrize("script,args,message", [
    ("train.py", ("--iters", 0), "--iters: must be an integer of at least 1"),
    ("train.py", ("--data", "missing", *TINY), "missing data_batch_1.bin"),
    ("visualize.py", (), "run.pt: no such checkpoint: train one with `python train.py --ckpt"),
    ("cifar.py", ("a", "b"), "unrecognized arguments: b")])
def test_each_scripts_errors_are_one_line(tmp_path, script, args, message):
    assert_one_line_error(run_process(script, *args, cwd=tmp_path), message)


def test_sigkill_during_a_checkpoint_save(reference, tmp_path):
    make_cifar(tmp_path / "data")
    proc = start_process("tests/inject.py", "hang_in_third_save", REPO / "train.py", "--data",
                         tmp_path / "data", *RUN, cwd=tmp_path)  # as `python train.py ...`
    wait_for(proc, "SAVING")
    proc.kill()
    proc.communicate(timeout=60)
    assert (tmp_path / "run.pt.tmp").exists(), "the kill landed inside the save"
    assert train.load(tmp_path / "run.pt")[0]["iteration"] == 40
    assert run_process("train.py", "--resume", cwd=tmp_path).returncode == 0
    assert_same_weights(tmp_path / "run.pt", reference / "run.pt")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_and_the_printed_command_continues_exactly(reference, tmp_path, sig):
    make_cifar(tmp_path / "data")
    proc = start_process("train.py", "--data", tmp_path / "data", *RUN, cwd=tmp_path)
    wait_for(proc, "it ")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig and "Traceback" not in err, err
    it = train.load(tmp_path / "run.pt")[0]["iteration"]
    head, command = err.strip().split("; continue with: ")
    assert head == f"{signal.Signals(sig).name}: stopped at iteration {it:,}; run.pt saved"
    assert 10 <= it < 400
    python, script, *args = shlex.split(command)
    assert python == "python" and script.endswith("train.py")
    r = run_process("train.py", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_weights(tmp_path / "run.pt", reference / "run.pt")


def test_a_file_size_limit_is_one_line_and_keeps_the_old_checkpoint(tiny_data, tmp_path):
    r = run_process("train.py", "--data", tiny_data, "--iters", 10, "--eval-every", 5, *TINY,
                    cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    before = (tmp_path / "run.pt").read_bytes()
    limit = len(before) // 2  # `ulimit -f`: a save larger than this fails inside torch.save

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = run_process("train.py", "--resume", "--iters", 20, cwd=tmp_path, preexec_fn=small_files)
    assert_one_line_error(r, "could not write run.pt", "the previous file, if any, is whole")
    assert (tmp_path / "run.pt").read_bytes() == before
    assert not (tmp_path / "run.pt.tmp").exists(), "the partial temporary file is left"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_stops_at_once_with_one_line_and_writes_nothing(tmp_path):
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), str(tmp_path / "data")],
                       env={**ENV, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("tools/gpu_check.sh: no GPU here") and list(tmp_path.iterdir()) == []

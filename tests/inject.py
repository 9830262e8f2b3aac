"""Run one of the project's scripts with one named fault injected, for the fault tests:

    python tests/inject.py FAULT SCRIPT [ARGS...]

Each fault is a function below that patches what the script will call; then the script runs
as __main__, exactly as `python SCRIPT ARGS...` would run it.
"""
import errno
import pathlib
import runpy
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cifar  # noqa: E402


def fail_save(at, fault):
    """torch.save runs as usual until its `at`-th call, which runs fault(file) instead."""
    real, calls = torch.save, []

    def save(obj, f):
        calls.append(1)
        return real(obj, f) if len(calls) < at else fault(f)
    torch.save = save


def disk_full_at_second_save():
    """The second save writes a few bytes, then fails as a full disk does."""
    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    fail_save(2, full)


def hang_in_third_save():
    """The third save writes half a file, says SAVING, and waits to be killed."""
    def hang(f):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        print("SAVING", flush=True)
        time.sleep(60)
    fail_save(3, hang)


def nan_at_step_7():
    """The 7th training loss (and so every weight after that step) is NaN."""
    real, steps = F.cross_entropy, []

    def loss(*args, **kwargs):
        if "reduction" in kwargs:  # evaluate()'s sums are left alone
            return real(*args, **kwargs)
        steps.append(1)
        return real(*args, **kwargs) * (float("nan") if len(steps) == 7 else 1.0)
    F.cross_entropy = loss


def offline():
    """The download fails at once, as with no network: nothing listens on port 9."""
    cifar.URL = "http://127.0.0.1:9/cifar-10-binary.tar.gz"
    cifar.download_cifar10.__defaults__ = (cifar.URL, cifar.MD5)


def unreadable_test_batch():
    """test_batch.bin cannot be read, as for a user without permission (root reads anything)."""
    real = pathlib.Path.read_bytes

    def read(path):
        if path.name == "test_batch.bin":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)
    pathlib.Path.read_bytes = read


def unwritable_folders():
    """No new file can be created anywhere, as in a folder without write permission."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    import tempfile
    tempfile.mkstemp = refuse


FAULTS = {f.__name__: f for f in (disk_full_at_second_save, hang_in_third_save, nan_at_step_7,
                                  offline, unreadable_test_batch, unwritable_folders)}

if __name__ == "__main__":
    fault, script, *args = sys.argv[1:]
    FAULTS[fault]()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")

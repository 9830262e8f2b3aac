"""Named faults: each patches what a script will call, through `setattr` (the fast tests pass
monkeypatch.setattr), or in a new process: `python tests/inject.py FAULT SCRIPT [ARGS...]`
patches, then runs SCRIPT as `python SCRIPT ARGS...` would."""
import errno
import pathlib
import runpy
import sys
import time

import torch
import torch.nn.functional as F


def fail_save(at, fault, setattr):
    """torch.save runs as usual until its `at`-th call, which runs fault(file) instead."""
    real, calls = torch.save, []

    def save(obj, f):
        calls.append(1)
        return real(obj, f) if len(calls) < at else fault(f)
    setattr(torch, "save", save)


def disk_full_at_second_save(setattr=setattr):
    """The second save writes a few bytes, then fails as a full disk does inside torch.save."""
    def full(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 7") \
            from OSError(errno.ENOSPC, "No space left on device")
    fail_save(2, full, setattr)


def hang_in_third_save(setattr=setattr):
    """The third save writes half a file, says SAVING, and waits to be killed."""
    def hang(f):
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        print("SAVING", flush=True)
        time.sleep(60)
    fail_save(3, hang, setattr)


def nan_at_step_7(setattr=setattr):
    """The 7th training loss (and so every weight after that step) is NaN."""
    real, steps = F.cross_entropy, []

    def loss(*args, **kwargs):
        if "reduction" in kwargs:  # evaluate()'s sums are left alone
            return real(*args, **kwargs)
        steps.append(1)
        return real(*args, **kwargs) * (float("nan") if len(steps) == 7 else 1.0)
    setattr(F, "cross_entropy", loss)


def offline(setattr=setattr):
    """The download fails at once, as with no network: nothing listens on port 9."""
    import cifar
    url = "http://127.0.0.1:9/cifar-10-binary.tar.gz"
    setattr(cifar, "URL", url)
    setattr(cifar.download_cifar10, "__defaults__", (url, cifar.MD5))


FAULTS = {f.__name__: f for f in (disk_full_at_second_save, hang_in_third_save, nan_at_step_7,
                                  offline)}

if __name__ == "__main__":
    fault, script, *args = sys.argv[1:]
    sys.path.insert(0, str(pathlib.Path(script).parent))
    FAULTS[fault]()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")

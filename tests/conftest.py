"""Shared helpers: synthetic CIFAR-10 files in the official binary layout, the scripts run as a
user runs them (in this process, or as a new one), and CUDA's one-device rule on the CPU.
`pytest tests --slow` also runs the tests marked slow: those that start processes."""
import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

import cifar  # the repository root is on sys.path: pyproject.toml's pythonpath

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (they start processes)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts processes; run with --slow")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        skip = pytest.mark.skip(reason="starts processes: run with --slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


def write_batch(path, images, labels):
    """The inverse of cifar.read_batch, written independently: label byte, then R, G, B planes."""
    labels = np.asarray(labels, np.uint8)[:, None]  # (N, 1)
    records = np.concatenate([labels, np.asarray(images, np.uint8).reshape(len(labels), -1)], 1)
    Path(path).write_bytes(records.tobytes())


def make_cifar(folder, per_batch=16, n_test=32, seed=0):
    """A tiny CIFAR-10 in `folder`: random images whose mean colour depends on the label."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(n, per_batch) for n in cifar.TRAIN_FILES] + [(cifar.TEST_FILES[0], n_test)]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 120, (n, 3, 32, 32)) + (labels * 12)[:, None, None, None]
        write_batch(folder / name, images, labels)
    return folder


# The flags of every tiny CPU run of train.py in the tests: width 8, the narrowest train.py
# accepts, 8 images a batch, no download.
TINY = ("--width", 8, "--batch", 8, "--no-download", "--device", "cpu")


@pytest.fixture
def tiny_data(tmp_path):
    return make_cifar(tmp_path / "data")


def run_cli(script, *args, cwd):
    """Run one of the project's scripts in this process, as its `__main__` block does (an
    expected error is one line, "error: ..."), from the folder `cwd`. Returns a
    CompletedProcess, as run_process does."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [str(REPO / script)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = importlib.import_module(script[:-3]).main(argv)
            except SystemExit as e:  # argparse's usage errors
                code = e.code
            except (OSError, ValueError, ArithmeticError) as e:
                code = f"error: {e}"
    finally:
        os.chdir(old[0])
        sys.argv = old[1]
    if isinstance(code, str):  # sys.exit(message): the message on stderr, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def run_process(script, *args, cwd, timeout=120, **kwargs):
    """Run one of the project's scripts as a new process, as a user would."""
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=ENV,
                          timeout=timeout, **{"capture_output": True, "text": True, **kwargs})


def start_process(script, *args, cwd, **kwargs):
    """Start one of the project's scripts in the background; returns the Popen."""
    return subprocess.Popen([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def wait_for(proc, prefix):
    """Read the process's stdout up to a line starting with `prefix`; return that line."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r}: {proc.stderr.read()}")


def real_data_dir():
    """CIFAR10_DIR as an absolute path (tests run scripts from other folders), or a skip."""
    folder = os.environ.get("CIFAR10_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("set CIFAR10_DIR to a cifar-10-batches-bin folder to run this on real images")
    return Path(folder).resolve()


def trained_looking(model, dtype=torch.float32):
    """`model` in `dtype`, eval mode, BatchNorm statistics and affine parameters not 0 and 1."""
    model = model.to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t, low, high in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0),
                                     (m.weight, 0.5, 1.5), (m.bias, -0.5, 0.5)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=dtype) * (high - low) + low)
    return model.eval()


class HostAndDevice(TorchFunctionMode):
    """CUDA's rule for host and device tensors, on the CPU: see test_devices.py."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for a in (*args, *kwargs.values()) for t in
                   (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)]
        host = [getattr(t, "_host", False) for t in tensors]
        if name == "numpy" and not host[0]:
            raise RuntimeError("numpy() of a device tensor: call .cpu() first")
        if name == "__getitem__" and host[0] and not all(host):
            raise RuntimeError("indices should be either on cpu or on the same device as the "
                               "indexed tensor")
        if name not in ("copy_", "__getitem__", "__setitem__", "to", "cpu") and \
                not all(host) and any(h and t.dim() for h, t in zip(host, tensors)):
            raise RuntimeError(f"{name}: expected all tensors to be on the same device, but "
                               f"found at least two devices, the host and the device")
        out = func(*args, **kwargs)
        if name in ("to", "cpu") and out is args[0]:
            out = out.view_as(out)  # as a copy to another device is: a tensor of its own
        on_host = name == "cpu" or (name != "to" and "device" not in kwargs and all(host))
        if name == "to" and not any(isinstance(a, (str, torch.device)) for a in
                                    list(args[1:]) + list(kwargs.values())):
            on_host = host[0]  # .to(dtype) or .to(memory_format=...): where it was

        for t in out if isinstance(out, (list, tuple)) else [out]:  # tuple: sort's, split's
            if isinstance(t, torch.Tensor):
                t._host = on_host
        return out


@contextlib.contextmanager
def one_device():
    """HostAndDevice, with what torch.load gives on the host, and the data's constants afresh."""
    real = torch.load
    torch.load = lambda *args, **kwargs: tree_map_only(
        torch.Tensor, lambda t: setattr(t, "_host", True) or t, real(*args, **kwargs))
    cifar._mean_std.cache_clear()
    try:
        with HostAndDevice():
            yield
    finally:
        torch.load = real
        cifar._mean_std.cache_clear()

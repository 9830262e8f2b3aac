"""Shared helpers: synthetic CIFAR-10 files in the official binary layout, the scripts run as a
user runs them (in this process, or as a new one), what the tests of several modules check, and
CUDA's one-device rule on the CPU. `pytest tests --slow` also runs the tests marked slow: those
that start processes."""
import contextlib
import hashlib
import io
import os
import runpy
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map_only

import cifar  # the repository root is on sys.path: pyproject.toml's pythonpath
import train
from resnet18 import ResNet18

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (they start processes)")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="starts processes: run with --slow")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--slow"):
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


# Every tiny CPU run of train.py in the tests: width 8 (the narrowest), 8 images a batch.
TINY = ("--width", 8, "--batch", 8, "--no-download", "--device", "cpu")


@pytest.fixture
def tiny_data(tmp_path):
    return make_cifar(tmp_path / "data")


def run_cli(script, *args, cwd):
    """Run one of the project's scripts in this process through its own `__main__` block (its
    own `except`), from the folder `cwd`: a CompletedProcess, as run_process gives. A test patches
    what the script imports (cifar, torch, resnet18): the script's own names are made afresh."""
    out, err, code = io.StringIO(), io.StringIO(), 0
    old = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [str(REPO / script), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        os.chdir(old[0])
        sys.argv = old[1]
    if isinstance(code, str):  # sys.exit(message): the message on stderr, status 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(list(map(str, args)), code or 0, out.getvalue(),
                                       err.getvalue())


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


def wait_for(proc, prefix, timeout=120):
    """The first line of the process's stdout starting with `prefix`; killed after `timeout` s."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith(prefix):
                return line
    finally:
        timer.cancel()
    raise AssertionError(f"no line starting with {prefix!r}: {proc.stderr.read()}")


def assert_one_line_error(r, *fragments):
    """A non-zero exit, no traceback, one line (ours, or argparse's usage and error)."""
    assert r.returncode != 0, r.stdout
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
            if p.is_file()}


def same_weights(a, b):
    """Whether the checkpoints `a` and `b` hold the same weights, bit for bit."""
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tgz_of(folder, path, member=None):
    """`folder` as the official archive at `path`, with one extra `member` (name, TarInfo type)."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=cifar.FOLDER)
        if member:
            info = tarfile.TarInfo(member[0])
            info.type, info.linkname = member[1], "/etc/passwd"
            tar.addfile(info)
    return hashlib.md5(path.read_bytes()).hexdigest()


def crops(image):
    """(mirrored, crop) for every 32 x 32 crop of the zero-padded `image` (3, 32, 32), mirrored."""
    pad = F.pad(image, (4, 4, 4, 4))
    return [(f, c.flip(-1) if f else c) for dy in range(9) for dx in range(9)
            for c in [pad[:, dy:dy + 32, dx:dx + 32]] for f in (False, True)]


# The fast paths against the plain path: the same batches, the same losses within a tolerance.

def batches(n=4, device="cpu"):
    """n batches of 16 from a seeded Loader over 64 random images (normalised, channels_last)."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    loader = cifar.Loader(images, labels, 16, "cpu", seed=2)
    return [tuple(t.to(device) for t in next(loader)) for _ in range(n)]


def project_steps(data, dtype=torch.float32, amp=False, compiled=False, device="cpu"):
    """Losses of train.py's step (channels_last, the hand-written SGD) on `data`."""
    torch.manual_seed(0)
    model = ResNet18(width=8).to(device, dtype, memory_format=torch.channels_last)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    step_model = train.compiled(model, torch.device(device)) if compiled else model
    return torch.stack([train.train_step(step_model, params, bufs, x.to(dtype), y, 0.05, 0.9,
                                         2e-4, amp)["loss"].cpu() for x, y in data])


def textbook_steps(data, dtype=torch.float32, device="cpu"):
    """Losses of the textbook loop (NCHW, torch.optim.SGD) on `data`."""
    torch.manual_seed(0)
    model = ResNet18(width=8).to(device, dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    losses = []
    for x, y in data:
        loss = F.cross_entropy(model(x.to(dtype).contiguous()), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().cpu())
    return torch.stack(losses)


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
    """CUDA's rule for host and device tensors, on the CPU. A tensor made without a device (as a
    new layer's weights are) or by `.cpu()` is on the host; `.to(device)`, `device=`, or an
    operation with a device tensor puts it on the device. As on CUDA, mixing a device tensor with
    a host tensor of 1+ dimensions fails, so do indexing a host tensor with a device index and
    `.numpy()` of a device tensor."""

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
        if name not in ("copy_", "__getitem__", "__setitem__", "to", "cpu",
                        "_has_compatible_shallow_copy_type") and \
                not all(host) and any(h and t.dim() for h, t in zip(host, tensors)):
            raise RuntimeError(f"{name}: expected all tensors to be on the same device, but "
                               f"found at least two devices, the host and the device")
        out = func(*args, **kwargs)
        if name in ("to", "cpu") and out is args[0]:
            out = out.view_as(out)  # as a copy to another device is: a tensor of its own
        on_host = name == "cpu" or (name != "to" and kwargs.get("device") is None and all(host))
        if name == "to" and not any(isinstance(a, (str, torch.device)) for a in
                                    list(args[1:]) + list(kwargs.values())):
            on_host = host[0]  # .to(dtype) or .to(memory_format=...): where it was

        for t in out if isinstance(out, (list, tuple)) else [out]:  # tuple: sort's, split's
            if isinstance(t, torch.Tensor):
                t._host = on_host
        return out


def parameter(cls, data=None, requires_grad=True):
    """nn.Parameter, where its tensor is: a layer's weights start on the host, as on CUDA."""
    p = torch.Tensor._make_subclass(cls, data, requires_grad)
    p._host = getattr(data, "_host", False)
    return p


@contextlib.contextmanager
def one_device():
    """HostAndDevice, with what torch.load gives and a new layer's weights on the host (a module
    moved gets new parameters, each where its tensor went), and the data's constants afresh."""
    real, new = torch.load, torch.nn.Parameter.__new__
    torch.load = lambda *args, **kwargs: tree_map_only(
        torch.Tensor, lambda t: setattr(t, "_host", True) or t, real(*args, **kwargs))
    torch.nn.Parameter.__new__ = parameter
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    cifar._mean_std.cache_clear()
    try:
        with HostAndDevice():
            yield
    finally:
        torch.load, torch.nn.Parameter.__new__ = real, new
        torch.__future__.set_overwrite_module_params_on_conversion(False)
        cifar._mean_std.cache_clear()

"""Every tensor of a computation lives on one device, the model's: checked on a CPU-only machine.

On a GPU a host tensor meeting a device tensor is an error; on the CPU both are the same tensor
and nothing fails. `HostAndDevice` gives CPU tensors CUDA's rule: a tensor is "on the host"
when it is made without `device=` (from numpy, a list, a factory) or by `.cpu()`, and stays so
through operations on host tensors only; `.to(device)` and `device=` put it "on the device",
and so does any operation with a device tensor in it (parameters, gradients, what torch.load
gives are on the device too, as nothing marks them). As on CUDA, an operation that mixes a
device tensor with a host tensor of one or more dimensions fails, so does indexing a host
tensor with a device index and `.numpy()` of a device tensor; copy_ and a host index into a
device tensor are allowed.
"""
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map_only

import cifar
from conftest import TINY, run_cli


class HostAndDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
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

        def mark(t):
            t._host = on_host
            return t
        return tree_map_only(torch.Tensor, mark, out)


@pytest.fixture
def host_and_device(monkeypatch):
    """HostAndDevice, to enter; what torch.load gives is on the host (map_location="cpu"), and
    the data's constants are made afresh (their cache is per device)."""
    real = torch.load

    def load(*args, **kwargs):
        return tree_map_only(torch.Tensor, lambda t: setattr(t, "_host", True) or t,
                             real(*args, **kwargs))
    monkeypatch.setattr(torch, "load", load)
    cifar._mean_std.cache_clear()
    yield HostAndDevice()
    cifar._mean_std.cache_clear()


def test_the_rule_catches_what_cuda_refuses(host_and_device):
    with host_and_device:
        host, device = torch.arange(10), torch.arange(10).to("cpu")
        with pytest.raises(RuntimeError, match="indices should be either on cpu"):
            host[device[:3]]
        with pytest.raises(RuntimeError, match="same device"):
            host + device
        with pytest.raises(RuntimeError, match="numpy"):
            device.numpy()
        assert device[host[:3]].tolist() == [0, 1, 2] and (device + host[0]).shape == (10,)
        assert (device.cpu() + host).numpy().tolist() == list(range(0, 20, 2))
        assert not getattr(device.sort().values, "_host", False)


def test_training_a_step_a_resume_and_amp_keep_one_device(tiny_data, tmp_path, host_and_device):
    for flags in (("--iters", 10, "--eval-every", 5), ("--resume", "--iters", 15),
                  ("--iters", 5, "--amp", "--ckpt", "amp.pt")):
        with host_and_device:
            r = run_cli("train.py", "--data", tiny_data, *TINY, *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr


def test_every_figure_top9_and_the_sanity_test_keep_one_device(tiny_data, tmp_path,
                                                               host_and_device):
    for ckpt in ("run.pt", "other.pt"):
        r = run_cli("train.py", "--data", tiny_data, "--iters", 10, *TINY, "--ckpt", ckpt,
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    with host_and_device:
        r = run_cli("visualize.py", "--ckpt", "run.pt", "--compare", "other.pt", "--out", "figs",
                    "--top9", "conv5_x:1", "--sanity", 1, "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr

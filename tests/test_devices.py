"""Every tensor of a computation lives on one device, the model's: checked on a CPU-only machine.

conftest.HostAndDevice gives CPU tensors CUDA's rule: a tensor made without `device=` or by
`.cpu()` is on the host; `.to(device)`, `device=`, or an operation with a device tensor puts it
on the device. As on CUDA, mixing a device tensor with a host tensor of 1+ dimensions fails, so
do indexing a host tensor with a device index and `.numpy()` of a device tensor.
"""
import pytest
import torch

from conftest import TINY, one_device, run_cli


# visualize.py under the same rule: test_visualize.py's `drawn` (every figure, --top9, --sanity).

def test_the_rule_catches_what_cuda_refuses():
    with one_device():
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


def test_training_a_step_a_resume_and_amp_keep_one_device(tiny_data, tmp_path):
    for flags in (("--iters", 6, "--eval-every", 3, "--amp"), ("--resume", "--iters", 9)):
        with one_device():
            r = run_cli("train.py", "--data", tiny_data, *TINY, *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr

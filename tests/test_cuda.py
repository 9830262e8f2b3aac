"""The GPU path: the same computations on CUDA as on the CPU. Every test skips without CUDA.

CUDA runs as train.py runs it (train.deterministic_cuda): cuDNN's deterministic algorithms, and
float32 as float32 (TF32 off), so the tolerances against the CPU are the CPU's own.
"""
import pytest
import torch

import cifar
import train
from conftest import batches, crops, project_steps, run_cli, same_weights
from resnet18 import ResNet18

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: this machine has no GPU (tools/gpu_check.sh "
                                       "runs these on a lent one)")
CUDA = ("--width", 8, "--batch", 8, "--no-download", "--device", "cuda")  # conftest's TINY, on CUDA


@pytest.fixture(autouse=True, scope="module")
def exact_cuda():
    train.deterministic_cuda(torch.device("cuda"))


def test_the_loader_on_cuda_keeps_the_loaders_invariants():
    # CUDA's generator draws other numbers than the CPU's: the invariants, not the batches.
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(64)
    loader = cifar.Loader(images, labels, 16, "cuda", seed=3, augment=False)
    seen = torch.cat([next(loader)[1] for _ in range(4)])
    assert sorted(seen.tolist()) == list(range(64))
    out = cifar.augment(images[:4].cuda(), torch.Generator("cuda").manual_seed(1)).cpu()
    assert all(any(torch.equal(o, c) for _, c in crops(i)) for o, i in zip(out, images[:4]))
    again = cifar.augment(images[:4].cuda(), torch.Generator("cuda").manual_seed(1)).cpu()
    assert torch.equal(out, again)


def test_steps_on_cuda_equal_the_cpu_path_in_float64():
    data = batches()
    cpu = project_steps(data, torch.float64)
    gpu = project_steps(batches(device="cuda"), torch.float64, device="cuda")
    torch.testing.assert_close(gpu, cpu, rtol=1e-9, atol=0)


def test_compile_on_cuda_in_train_pys_mode_matches_eager():  # mode reduce-overhead
    data = batches(device="cuda")
    eager = project_steps(data, device="cuda")
    torch.testing.assert_close(project_steps(data, compiled=True, device="cuda"), eager,
                               rtol=1e-3, atol=1e-4)


def test_no_host_device_sync_inside_the_loop():
    torch.manual_seed(0)
    model = ResNet18(width=8).to("cuda", memory_format=torch.channels_last)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    loader = cifar.Loader(images, torch.randint(0, 10, (64,)), 16, "cuda")
    next(loader)  # the first permutation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(6):  # crosses an epoch boundary
            x, y = next(loader)
            train.train_step(model, params, bufs, x, y, 0.1, 0.9, 2e-4)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_resume_is_bit_exact_on_cuda(tiny_data, tmp_path):
    args = ("--data", tiny_data, "--lr-drops", 12, "--eval-every", 10, *CUDA)
    for ckpt, iters, resume in (("straight.pt", 30, []), ("split.pt", 15, []),
                                ("split.pt", 30, ["--resume"])):
        r = run_cli("train.py", *args, "--iters", iters, "--ckpt", ckpt, *resume, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert same_weights(tmp_path / "straight.pt", tmp_path / "split.pt"), "not bit-exact"

"""train.py: the hand-written SGD, the schedule, the CLI, exact resume, and the fast paths."""
import copy
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import cifar
import train
from conftest import REPO, real_data_dir, run_cli
from resnet18 import ResNet18

TINY = ("--width", 4, "--batch", 8, "--eval-every", 10, "--no-download", "--device", "cpu")


def test_sgd_step_equals_torch_optim_sgd():
    torch.manual_seed(0)
    model = ResNet18(width=4).double()
    oracle, initial = copy.deepcopy(model), copy.deepcopy(model)
    opt = torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    for step in range(6):
        x, y = torch.randn(4, 3, 32, 32, dtype=torch.double), torch.randint(0, 10, (4,))
        lr = 0.1 if step < 3 else 0.01
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(oracle(x), y).backward()
        opt.step()
        for p in params:
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        train.sgd_step(params, bufs, lr, 0.9, 2e-4)
    for (name, p), q in zip(model.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=0, msg=name)
        assert not torch.equal(p, initial.get_parameter(name)), f"{name} never moved"


def test_lr_at_around_each_drop():
    assert train.lr_at(0) == 0.1 and train.lr_at(31999) == 0.1
    assert train.lr_at(32000) == pytest.approx(0.01) and train.lr_at(49999) == pytest.approx(0.01)
    drops = (32000, 48000)
    assert [train.lr_at(i, 0.1, drops) for i in (47999, 48000)] == pytest.approx([0.01, 0.001])
    assert train.lr_at(10**6, 0.5, ()) == 0.5


def test_table_rows():
    def history(*its):
        return [{"iteration": i, "train_acc": 90.0, "test_acc": 79.6} for i in its]
    rows = train.table(history(5000, 10000, 15000, 20000, 25000)).splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["10,000", "20,000", "25,000"]
    assert rows[0] == "| 10,000 | 10.00 | 90.00 | 20.40 | 79.60 | 79.60 |"
    assert len(train.table(history(100, 200, 300)).splitlines()) == 5


def test_cli_writes_checkpoint_csv_and_table(tiny_data, tmp_path):
    r = run_cli("train.py", "--data", tiny_data, "--iters", 20, "--lr-drops", 15, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| Iterations | Train error (%)" in r.stdout and "| 20 |" in r.stdout
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    assert ckpt["iteration"] == 20 and ckpt["args"]["width"] == 4 and ckpt["args"]["lr_drops"] == [15]
    assert [h["iteration"] for h in ckpt["history"]] == [10, 20]
    assert set(ckpt["history"][0]) >= {"iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert ckpt["history"][1]["lr"] == pytest.approx(0.01)
    assert (tmp_path / "run.csv").read_text().splitlines()[0].startswith("iteration,lr,train_loss")
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 3
    assert not list(tmp_path.glob("*.tmp"))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_resume_is_bit_exact(tiny_data, tmp_path):
    args = ("--data", tiny_data, "--lr-drops", 12, *TINY)
    assert run_cli("train.py", *args, "--iters", 30, "--ckpt", "straight.pt", cwd=tmp_path).returncode == 0
    assert run_cli("train.py", *args, "--iters", 15, "--ckpt", "split.pt", cwd=tmp_path).returncode == 0
    r = run_cli("train.py", *args, "--iters", 30, "--ckpt", "split.pt", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = weights(tmp_path / "straight.pt"), weights(tmp_path / "split.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the straight run"
    torch.manual_seed(0)  # train.py's initial weights for --seed 0
    initial = ResNet18(width=4).state_dict()
    assert not torch.equal(a["fc.weight"], initial["fc.weight"]), "the run did not train"
    hist = torch.load(tmp_path / "split.pt", weights_only=True)["history"]
    assert [h["iteration"] for h in hist] == [10, 15, 20, 30]


def test_resume_may_change_only_the_schedule_still_ahead(tiny_data, tmp_path):
    args = ("--data", tiny_data, *TINY)
    assert run_cli("train.py", *args, "--iters", 30, "--lr-drops", 20, "--ckpt", "straight.pt", cwd=tmp_path).returncode == 0
    assert run_cli("train.py", *args, "--iters", 15, "--lr-drops", "--ckpt", "ext.pt", cwd=tmp_path).returncode == 0
    r = run_cli("train.py", *args, "--iters", 30, "--lr-drops", 10, "--ckpt", "ext.pt", "--resume", cwd=tmp_path)
    assert r.returncode != 0 and "a different schedule before iteration 15" in r.stderr
    r = run_cli("train.py", *args, "--iters", 30, "--lr-drops", 20, "--ckpt", "ext.pt", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = weights(tmp_path / "straight.pt"), weights(tmp_path / "ext.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_saves_a_checkpoint_that_resumes(tiny_data, tmp_path):
    cmd = [sys.executable, str(REPO / "train.py"), "--data", str(tiny_data), "--iters", "100000",
           "--lr-drops", "--eval-every", "0", "--width", "4", "--batch", "8", "--no-download", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("it "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT and "Traceback" not in err, err
    assert "SIGINT: stopped at iteration" in out
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    assert 100 <= ckpt["iteration"] < 100000
    r = run_cli("train.py", *cmd[2:4], "--iters", ckpt["iteration"] + 5, *cmd[6:], "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "run.pt", weights_only=True)["iteration"] == ckpt["iteration"] + 5


def test_real_data_short_run_beats_chance(tmp_path):
    folder = real_data_dir()
    r = run_cli("train.py", "--data", folder, "--iters", 300, "--batch", 32, "--width", 8, "--lr-drops", 250,
                "--eval-every", 0, "--no-download", "--device", "cpu", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    acc = torch.load(tmp_path / "run.pt", weights_only=True)["history"][-1]["test_acc"]
    assert acc > 25, f"test accuracy {acc:.1f} % after 300 iterations (chance: 10 %)"


# The fast paths against the plain path: the same few steps, the same losses within a tolerance.

def run_steps(memory_format=torch.contiguous_format, amp=False, compiled=False, steps=4):
    torch.manual_seed(0)
    model = ResNet18(width=4).to(memory_format=memory_format)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    step_model = torch.compile(model) if compiled else model
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    loader = cifar.Loader(images, labels, 16, "cpu", seed=2)
    args = SimpleNamespace(amp=amp, momentum=0.9, wd=2e-4)
    losses = []
    for _ in range(steps):
        x, y = next(loader)
        losses.append(train.train_step(step_model, params, bufs, x.contiguous(memory_format=memory_format), y, 0.05, args).item())
    return torch.tensor(losses)


def plain_steps(steps=4):
    """The textbook loop: NCHW, torch.optim.SGD, the same batches."""
    torch.manual_seed(0)
    model = ResNet18(width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=2e-4)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    loader = cifar.Loader(images, labels, 16, "cpu", seed=2)
    losses = []
    for _ in range(steps):
        x, y = next(loader)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses)


def test_default_path_matches_the_textbook_loop():
    torch.testing.assert_close(run_steps(torch.channels_last), plain_steps(), rtol=1e-4, atol=1e-5)


def test_bf16_autocast_stays_close():
    torch.testing.assert_close(run_steps(torch.channels_last, amp=True), plain_steps(), rtol=0.05, atol=0.05)


def test_cli_accepts_the_fast_path_flags(tiny_data, tmp_path):
    r = run_cli("train.py", "--data", tiny_data, "--iters", 10, "--lr-drops", "--amp", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert torch.load(tmp_path / "run.pt", weights_only=True)["args"]["amp"] is True


def test_torch_compile_matches_eager():
    t = time.time()
    torch.testing.assert_close(run_steps(torch.channels_last, compiled=True), plain_steps(), rtol=1e-3, atol=1e-4)
    print(f"compiled in {time.time() - t:.0f} s")

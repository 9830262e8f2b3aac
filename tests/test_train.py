"""train.py: the hand-written SGD, the schedule, Table 1, the CLI, exact resume, the fast paths."""
import copy
import os
import signal
import time

import pytest
import torch
import torch.nn.functional as F

import cifar
import train
from conftest import TINY, real_data_dir, run_cli
from resnet18 import ResNet18


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


def history(*its):
    return [{"iteration": i, "train_acc": 90.0, "test_acc": 79.6, "train_images": 50000,
             "step_acc": 87.5, "step_images": min(i // 100, 128)} for i in its]


def test_table_has_a_column_every_10000_iterations_and_the_last_or_every_evaluation():
    lines = train.table(history(5000, 10000, 15000, 20000, 25000)).splitlines()
    assert lines == ["| Iterations | 10,000 | 20,000 | 25,000 |",
                     "|---|---:|---:|---:|",
                     "| Train error (%), 50,000 images, no augmentation | 10.00 | 10.00 | 10.00 |",
                     "| Train accuracy (%), 50,000 images, no augmentation | 90.00 | 90.00 | "
                     "90.00 |",
                     "| Train accuracy (%), last 128 training images (the study's measure) | "
                     "87.50 (100 images) | 87.50 | 87.50 |",
                     "| Test error (%) | 20.40 | 20.40 | 20.40 |",
                     "| Test accuracy (%) | 79.60 | 79.60 | 79.60 |",
                     "| Study test accuracy (%) | 79.60 | 83.40 | - |"]
    short = history(100, 200, 300)  # too short for two columns: every evaluation
    del short[0]["step_acc"]  # a row saved before the study's measure was recorded
    lines = train.table(short).splitlines()
    assert lines[0] == "| Iterations | 100 | 200 | 300 |" and len(lines) == 7  # no study row
    assert lines[4] == "| Train accuracy (%), last 128 training images (the study's measure) | " \
                       "not recorded | 87.50 (2 images) | 87.50 (3 images) |"


def test_the_schedule_is_the_studys_drop_where_the_run_reaches_it_or_the_flags():
    def drops(*flags):
        args = train.get_args(list(flags))[0]
        return train.schedule(args.iters, args.lr_drops)
    assert drops("--iters", "1000") == [] and drops("--iters", "32000") == []
    assert drops("--iters", "32001") == [32000]
    assert drops("--iters", "50000", "--lr-drops", "48000", "32000") == [32000, 48000]
    assert drops("--lr-drops") == []
    args, given = train.get_args(["--width", "64", "--resume", "--lr-drops"])  # flags given
    assert given == {"width", "lr_drops"}
    assert args.width == 64 and args.iters == 50000 and args.lr == 0.1 and args.lr_drops == []


def test_cli_writes_the_checkpoint_and_table_1(tiny_data, tmp_path):
    r = run_cli("train.py", "--data", tiny_data, "--iters", 20, "--eval-every", 10,
                "--lr-drops", 15, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| Iterations | 10 | 20 |" in r.stdout
    assert "| Study test accuracy (%)" not in r.stdout  # none of the study's columns
    assert "it     10/20 |" in r.stdout and " left " in r.stdout  # the first log line: at 10
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    assert (ckpt["iteration"], ckpt["args"]["width"], ckpt["args"]["lr_drops"]) == (20, 8, [15])
    assert ckpt["args"]["data"] == str(tiny_data.resolve())  # absolute: found from anywhere
    assert [h["iteration"] for h in ckpt["history"]] == [10, 20]
    assert ckpt["history"][1]["lr"] == pytest.approx(0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run.pt"]  # no .tmp left


def test_the_studys_train_measure_is_the_steps_own_predictions(tiny_data, tmp_path,
                                                                monkeypatch):
    """The last 128 training images before each evaluation (fewer when the interval has fewer),
    each classified by its own step's forward pass: here, by a copy of the model before it."""
    real, right = train.train_step, []

    def step(model, params, bufs, x, y, *args):
        with torch.no_grad():
            right.append(copy.deepcopy(model)(x).argmax(1) == y)  # (8,) bool
        return real(model, params, bufs, x, y, *args)
    monkeypatch.setattr(train, "train_step", step)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 30, "--eval-every", 20, *TINY,
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = torch.load(tmp_path / "run.pt", weights_only=True)["history"]
    last = [torch.cat(right[4:20]), torch.cat(right[20:30])]  # 128 of 160 images; 80 of 80
    assert [(h["step_images"], h["step_acc"]) for h in rows] == \
        [(len(c), 100.0 * c.float().mean().item()) for c in last]
    log = next(ln for ln in r.stdout.splitlines() if ln.startswith("it     10/30 |"))
    assert f"| acc {100.0 * torch.cat(right[:10]).float().mean().item():5.2f}% |" in log


def same_weights(a, b):
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_real_data_short_run_beats_chance(tmp_path):
    folder = real_data_dir()
    r = run_cli("train.py", "--data", folder, "--iters", 300, "--batch", 32, "--width", 8,
                "--lr-drops", 250, "--eval-every", 0, "--no-download", "--device", "cpu",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = torch.load(tmp_path / "run.pt", weights_only=True)["history"][-1]["test_acc"]
    assert acc > 25, f"test accuracy {acc:.1f} % after 300 iterations (chance: 10 %)"


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


@pytest.mark.parametrize("dtype,amp,rtol,atol", [
    (torch.float64, False, 1e-10, 0),  # the same arithmetic
    (torch.float32, False, 1e-2, 0),  # layouts sum in other orders: float32 rounding, 4 steps
    (torch.float32, True, 0.05, 0.05)], ids=["float64", "float32", "bfloat16"])
def test_the_step_equals_the_textbook_loop(dtype, amp, rtol, atol):
    data = batches()
    torch.testing.assert_close(project_steps(data, dtype, amp), textbook_steps(data, dtype),
                               rtol=rtol, atol=atol)


@pytest.mark.slow  # compiling takes a minute on a fresh machine
def test_torch_compile_matches_eager():
    data = batches()
    t = time.time()
    torch.testing.assert_close(project_steps(data, compiled=True), project_steps(data),
                               rtol=1e-3, atol=1e-4)
    print(f"compiled in {time.time() - t:.0f} s")


# --- Stop and continue with the run's own settings --------------------------------------------

def stop_at_step(monkeypatch, n, sig=signal.SIGINT):
    """train.py's `n`-th training step sends `sig` to this process, as Ctrl-C would."""
    real, steps = train.train_step, []

    def step(*args, **kwargs):
        steps.append(1)
        if len(steps) == n:
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)
    monkeypatch.setattr(train, "train_step", step)


QUICK = ("--iters", 30, "--lr-drops", 12, "--eval-every", 7, "--width", 8, "--batch", 8,
         "--seed", 3)  # none of them the default


@pytest.mark.parametrize("net", [(), ("--depth", 34, "--plain")], ids=["ResNet-18", "plain-34"])
def test_ctrl_c_and_the_printed_command_end_bit_identical(tiny_data, tmp_path, monkeypatch, net):
    r = run_cli("train.py", "--data", tiny_data, *QUICK, *net, "--ckpt", "straight.pt",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stop_at_step(monkeypatch, 16)
    r = run_cli("train.py", "--data", tiny_data, *QUICK, *net, "--ckpt", "split.pt",
                cwd=tmp_path)
    command = f"python {train.__file__} --resume --ckpt split.pt"
    assert r.returncode == 128 + signal.SIGINT
    assert r.stderr == f"SIGINT: stopped at iteration 16; split.pt saved; continue with: " \
                       f"{command}\n"
    monkeypatch.undo()
    r = run_cli("train.py", *command.split()[2:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "iterations 16 -> 30; learning rate 0.1, divided by 10 at: 12" in r.stdout
    assert same_weights(tmp_path / "straight.pt", tmp_path / "split.pt")
    hist = [torch.load(tmp_path / f, weights_only=True)["history"] for f in ("straight.pt",
                                                                             "split.pt")]
    assert [h["iteration"] for h in hist[1]] == [7, 14, 21, 28, 30]
    assert hist[1] == hist[0]  # every figure, the study's train measure across the stop too


def test_resume_takes_a_change_of_what_is_still_ahead_and_says_so(tiny_data, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(train, "DROP", 25)  # the study's drop, inside a tiny run
    args = ("--data", tiny_data, "--eval-every", 10, *TINY)
    r = run_cli("train.py", *args, "--iters", 30, "--ckpt", "straight.pt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("train.py", *args, "--iters", 20, "--ckpt", "part.pt", cwd=tmp_path)
    assert r.returncode == 0 and "learning rate 0.1, divided by 10 at: none" in r.stdout
    r = run_cli("train.py", "--resume", "--ckpt", "part.pt", "--iters", 30, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "iterations 20 -> 30; learning rate 0.1, divided by 10 at: 25" in r.stdout
    assert same_weights(tmp_path / "straight.pt", tmp_path / "part.pt")

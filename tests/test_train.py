"""train.py: the study's settings handed to the step, the schedule, evaluation, Table 1, the
study's train measure, exact resume, the fast paths against the textbook loop."""
import copy
import os
import signal

import pytest
import torch
import torch.nn.functional as F

import cifar
import train
from conftest import (TINY, batches, one_device, project_steps, real_data_dir, run_cli,
                      same_weights, textbook_steps, trained_looking)
from resnet18 import ResNet, ResNet18

STUDY = {"iters": 50000, "batch": 32, "lr": 0.1, "momentum": 0.9, "wd": 0.0002, "depth": 18,
         "width": 64, "plain": False}  # the study's §2 and He et al.'s ResNet-18


def test_the_defaults_are_the_studys_settings():
    args = train.get_args([])
    assert {k: getattr(args, k) for k in STUDY} == STUDY
    assert train.schedule(args.iters, args.lr_drops) == [32000]


def recording_batches(monkeypatch, stop_at=None, sig=signal.SIGINT):
    """The batches train.py's loader gives, in a list that fills as the run takes them; taking
    batch `stop_at`, the run gets `sig`, as from Ctrl-C, and stops after that step."""
    real, seen = cifar.Loader.__next__, []

    def next_batch(loader):
        seen.append(real(loader))
        if len(seen) == stop_at:
            os.kill(os.getpid(), sig)
        return seen[-1]
    monkeypatch.setattr(cifar.Loader, "__next__", next_batch)
    return seen


@pytest.mark.parametrize("flags,lr,momentum,wd,batch", [
    ((), 0.1, 0.9, 0.0002, 32),  # the study's, as the defaults give them
    (("--lr", 0.05, "--momentum", 0.5, "--wd", 0.001, "--batch", 16), 0.05, 0.5, 0.001, 16)],
    ids=["the study's", "others"])
def test_the_cli_hands_its_settings_to_the_step(tiny_data, tmp_path, monkeypatch, flags, lr,
                                                momentum, wd, batch):
    """Three steps of train.py equal torch.optim.SGD's on its batches, seed and layout."""
    seen = recording_batches(monkeypatch)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 3, "--eval-every", 0, "--width", 8,
                "--no-download", "--device", "cpu", *flags, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [len(y) for _, y in seen] == [batch] * 3
    torch.manual_seed(0)  # train.py's default --seed
    model = ResNet18(width=8).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for x, y in seen:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    got = torch.load(tmp_path / "run.pt", weights_only=True)["model"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7, msg=k)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "--amp"])
def test_amp_runs_the_steps_in_bfloat16(tiny_data, tmp_path, monkeypatch, amp):
    real, dtypes = F.cross_entropy, []

    def loss(logits, *args, **kwargs):
        dtypes.append(logits.dtype)
        return real(logits, *args, **kwargs)
    monkeypatch.setattr(F, "cross_entropy", loss)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 2, "--eval-every", 0, *TINY,
                *["--amp"] * amp, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert dtypes[:2] == [torch.bfloat16 if amp else torch.float32] * 2  # the two steps' logits


def test_evaluate_uses_the_running_statistics_and_leaves_the_model_training():
    torch.manual_seed(0)
    model = trained_looking(ResNet18(width=8))  # eval mode; its BatchNorms not 0 and 1
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    with torch.no_grad():
        logits = model(cifar.normalize(images))
    want = F.cross_entropy(logits, labels).item(), 5.0 * (logits.argmax(1) == labels).sum().item()
    before = copy.deepcopy(model.state_dict())
    got = train.evaluate(model.train(), images, labels, batch=8)  # batches of 8, 8, 4; 5 % each
    assert got == pytest.approx(want, rel=1e-5)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_at_around_each_drop():
    assert train.lr_at(0) == 0.1 and train.lr_at(31999) == 0.1
    assert train.lr_at(32000) == pytest.approx(0.01) and train.lr_at(49999) == pytest.approx(0.01)
    assert [train.lr_at(i, 0.1, (32000, 48000)) for i in (47999, 48000)] == \
        pytest.approx([0.01, 0.001])
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
        args = train.get_args(list(flags))
        return train.schedule(args.iters, args.lr_drops)
    assert drops("--iters", "1000") == [] and drops("--iters", "32000") == []
    assert drops("--iters", "32001") == [32000]
    assert drops("--iters", "50000", "--lr-drops", "48000", "32000") == [32000, 48000]
    assert drops("--lr-drops") == []


def test_a_run_writes_table_1_its_checkpoint_and_the_studys_train_measure(tiny_data, tmp_path,
                                                                          monkeypatch):
    """The study's measure: the last 128 training images before each evaluation (fewer when the
    interval has fewer), each classified by its own step's forward pass, seen here."""
    seen, real, logits = recording_batches(monkeypatch), ResNet.forward, []

    def forward(model, x):
        out = real(model, x)
        if model.training:
            logits.append(out.detach())
        return out
    monkeypatch.setattr(ResNet, "forward", forward)
    r = run_cli("train.py", "--data", tiny_data, "--iters", 30, "--eval-every", 20,
                "--lr-drops", 25, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| Iterations | 20 | 30 |" in r.stdout and "| Study test" not in r.stdout
    ckpt = torch.load(tmp_path / "run.pt", weights_only=True)
    assert (ckpt["iteration"], ckpt["args"]["width"], ckpt["args"]["lr_drops"]) == (30, 8, [25])
    assert ckpt["args"]["data"] == str(tiny_data.resolve())  # absolute: found from anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run.pt"]  # no .tmp left
    rows = ckpt["history"]  # at 20 and at the end, past the drop
    assert [(h["iteration"], h["lr"]) for h in rows] == [(20, 0.1), (30, pytest.approx(0.01))]
    right = [z.argmax(1) == y for z, (_, y) in zip(logits, seen, strict=True)]  # (8,) each
    last = [torch.cat(right[4:20]), torch.cat(right[20:30])]  # 128 of 160 images; 80 of 80
    assert [(h["step_images"], h["step_acc"]) for h in rows] == \
        [(len(c), 100.0 * c.float().mean().item()) for c in last]
    log = next(ln for ln in r.stdout.splitlines() if ln.startswith("it     10/30 |"))  # at 10
    assert f"| acc {100.0 * torch.cat(right[:10]).float().mean().item():5.2f}% |" in log
    assert " left " in log


@pytest.mark.slow
def test_real_data_short_run_beats_chance(tmp_path):
    folder = real_data_dir()
    r = run_cli("train.py", "--data", folder, "--iters", 300, "--batch", 32, "--width", 8,
                "--lr-drops", 250, "--eval-every", 0, "--no-download", "--device", "cpu",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = torch.load(tmp_path / "run.pt", weights_only=True)["history"][-1]["test_acc"]
    assert acc > 25, f"test accuracy {acc:.1f} % after 300 iterations (chance: 10 %)"


# The fast paths against the textbook loop: the same batches, the same losses.

@pytest.mark.parametrize("dtype,amp,rtol,atol", [
    (torch.float64, False, 1e-10, 0),  # the same arithmetic in another layout
    (torch.float32, True, 0.05, 0.05)], ids=["float64", "bfloat16"])  # --amp stays close
def test_the_step_equals_the_textbook_loop(dtype, amp, rtol, atol):
    data = batches()
    torch.testing.assert_close(project_steps(data, dtype, amp), textbook_steps(data, dtype),
                               rtol=rtol, atol=atol)


def test_a_run_a_resume_and_amp_keep_one_device(tiny_data, tmp_path):  # conftest.HostAndDevice
    for flags in (("--iters", 6, "--eval-every", 3, "--amp"), ("--resume", "--iters", 9)):
        with one_device():  # visualize.py's figures too: test_visualize.py's `drawn`
            r = run_cli("train.py", "--data", tiny_data, *TINY, *flags, cwd=tmp_path)
        assert r.returncode == 0, r.stderr


# --- Stop and continue with the run's own settings --------------------------------------------

QUICK = ("--iters", 30, "--lr-drops", 12, "--eval-every", 7, "--width", 8, "--batch", 8,
         "--seed", 3)  # none of them the default


@pytest.mark.parametrize("net", [(), ("--depth", 34, "--plain")], ids=["ResNet-18", "plain-34"])
def test_ctrl_c_and_the_printed_command_end_bit_identical(tiny_data, tmp_path, monkeypatch, net):
    r = run_cli("train.py", "--data", tiny_data, *QUICK, *net, "--ckpt", "straight.pt",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    recording_batches(monkeypatch, stop_at=16)
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
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(train, "DROP", 25)  # the study's drop inside a tiny run: train.main
    monkeypatch.chdir(tmp_path)             # sees it (a run of the script would not)
    args = ["--data", str(tiny_data), "--eval-every", "10", *map(str, TINY)]
    assert train.main([*args, "--iters", "30", "--ckpt", "straight.pt"]) == 0
    assert train.main([*args, "--iters", "20", "--ckpt", "part.pt"]) == 0
    assert "learning rate 0.1, divided by 10 at: none" in capsys.readouterr().out
    assert train.main(["--resume", "--ckpt", "part.pt", "--iters", "30"]) == 0
    assert "iterations 20 -> 30; learning rate 0.1, divided by 10 at: 25" in capsys.readouterr().out
    assert same_weights(tmp_path / "straight.pt", tmp_path / "part.pt")

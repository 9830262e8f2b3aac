"""Train ResNet-18 on CIFAR-10 as the study did (Fenglin Liu, "Investigating ResNet on the
Perspective of Experimental Results and Analysis", §2), and print its Table 1.

    python train.py --iters 50000 --batch 32                  # the study's run: a GPU job
    python train.py --iters 2000 --width 16 --lr-drops 1280 --eval-every 200   # CPU, minutes

The study: SGD with momentum 0.9 and weight decay 0.0002, batch 32, learning rate 0.1 divided
by 10 at iteration 32,000, 50,000 iterations (He et al. 2016 §4.2 divide again at 48,000:
`--lr-drops 32000 48000`). A shorter run without --lr-drops is the study's first part, at 0.1
throughout; `--resume` with a larger --iters continues the study's schedule exactly. The loop
is written out: data, model, the SGD update by hand, lr_at(it), evaluation at fixed iterations,
a checkpoint that resumes exactly (checkpoint.py keeps it safe).

    python train.py --iters 50000 --resume                    # continue run.pt where it stopped
"""
import signal
import sys

if __name__ == "__main__":  # Ctrl-C before the loop (importing torch, reading the data) is one
    # line; the loop installs its own handlers, which save first.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(
        "error: interrupted before training started; no checkpoint was written"))

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import checkpoint  # noqa: E402
import cifar  # noqa: E402
from resnet18 import BLOCKS  # noqa: E402

STUDY_DROP = 32000  # the study's one learning-rate drop, in iterations
TRAIN_SUBSET = 10000  # images on which train accuracy is measured between the Table 1 rows
LOG_EVERY = 100  # iterations between log lines
SAME_RUN = ("depth", "plain", "width", "batch", "lr", "momentum", "wd", "seed", "amp")  # kept
MAX_SEED = 2**64 - 1  # torch's generators take a 64-bit seed
# Narrower networks crash PyTorch's CPU backward of a 1x1 stride-2 convolution (the projection
# shortcut) in channels_last when it has fewer than 8 input channels, on AVX2 CPUs.
MIN_WIDTH = 8


def positive(text):
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def width(text):
    if not text.isdigit() or int(text) < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"must be an integer of at least {MIN_WIDTH}, "
                                         f"got {text!r}")
    return int(text)


def seed(text):
    if not text.isdigit() or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1, got {text!r}")
    return int(text)


def finite(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    study = p.add_argument_group("the study's SGD and schedule (its §2)")
    study.add_argument("--iters", type=positive, default=50000,
                   help="SGD iterations in all (default 50000, the study)")
    study.add_argument("--batch", type=positive, default=32,
                   help="images per iteration (default 32, the study)")
    study.add_argument("--lr", type=finite, default=0.1,
                   help="initial learning rate (default 0.1, the study)")
    study.add_argument("--momentum", type=finite, default=0.9,
                   help="SGD momentum (default 0.9, the study)")
    study.add_argument("--wd", type=finite, default=0.0002,
                   help="weight decay, on every parameter (default 0.0002, the study)")
    study.add_argument("--lr-drops", type=positive, nargs="*", metavar="IT",
                   help="iterations at which the learning rate is divided by 10 (default: the "
                        "study's 32000 when the run is longer, else none; He et al. use 32000 "
                        "48000; the flag with no value: a constant rate)")
    net = p.add_argument_group("the network (He et al. Table 1)")
    net.add_argument("--depth", type=int, choices=sorted(BLOCKS), default=18,
                   help="18 or 34 layers, He et al. Table 1 (default 18, the study)")
    net.add_argument("--plain", action="store_true",
                   help="drop every shortcut: He et al.'s plain network, the control "
                        "(default off)")
    net.add_argument("--width", type=width, default=64,
                   help="channels of conv1; every stage scales with it (default 64, the paper; "
                        "at least 8)")
    run = p.add_argument_group("the run")
    run.add_argument("--data", default="./data",
                   help="CIFAR-10 folder, downloaded there if it holds none (default ./data)")
    run.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading missing data")
    run.add_argument("--seed", type=seed, default=0,
                   help="seed of the weights and of the batches (default 0)")
    run.add_argument("--eval-every", type=int, default=1000,
                   help="iterations between evaluations and checkpoints; 0: only at the end "
                        "(default 1000)")
    run.add_argument("--ckpt", default="run.pt",
                   help="checkpoint to write; the history goes beside it as .csv "
                        "(default run.pt)")
    run.add_argument("--resume", action="store_true",
                   help="continue the run in --ckpt up to --iters")
    run.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    run.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (default off: float32). Faster on GPUs and on CPUs "
                        "with AMX units (grep amx_bf16 /proc/cpuinfo); slower on other CPUs")
    run.add_argument("--compile", action="store_true",
                   help="torch.compile the model; on CUDA with CUDA graphs (mode "
                        "reduce-overhead), never yet run on a GPU. Off by default")
    args = p.parse_args(argv)
    if args.lr <= 0:
        p.error(f"--lr {args.lr}: must be above 0")
    if args.wd < 0:
        p.error(f"--wd {args.wd}: must be 0 or more")
    if not 0 <= args.momentum < 1:
        p.error(f"--momentum {args.momentum}: must be from 0 up to, not including, 1")
    if args.eval_every < 0:
        p.error(f"--eval-every {args.eval_every}: must be 0 or more")
    if args.lr_drops is None:  # the study's drop, where the run reaches it
        args.lr_drops = [STUDY_DROP] if args.iters > STUDY_DROP else []
    if len(set(args.lr_drops)) < len(args.lr_drops):
        p.error(f"--lr-drops {' '.join(map(str, args.lr_drops))}: an iteration given twice "
                f"(each drop divides by 10 once)")
    if any(d >= args.iters for d in args.lr_drops):
        p.error(f"--lr-drops {' '.join(map(str, args.lr_drops))} must all be below --iters "
                f"{args.iters}; give drops inside the run, or --lr-drops with no value for a "
                f"constant rate")
    args.lr_drops = sorted(args.lr_drops)
    return args


def lr_at(it, lr=0.1, drops=(STUDY_DROP,)):
    """The learning rate of iteration `it` (0-based): `lr`, divided by 10 at each drop passed."""
    return lr / 10 ** sum(it >= d for d in drops)


@torch.no_grad()
def sgd_step(params, bufs, lr, momentum, wd):
    """One step of SGD with momentum and weight decay, as torch.optim.SGD (dampening 0, no
    Nesterov). For every parameter p with gradient g and momentum buffer buf (zeros before the
    first step, so that the first step gives buf = d exactly):
        d = g + wd * p            # weight decay, folded into the gradient, on every parameter
        buf = momentum * buf + d
        p = p - lr * buf
    Each line below does that for all parameters at once (one multi-tensor kernel per line).
    """
    grads = [p.grad for p in params]
    torch._foreach_add_(grads, params, alpha=wd)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


def train_step(model, params, bufs, x, y, lr, momentum, wd, amp=False):
    """Forward, backward and update on one batch; returns the loss as a device tensor (no sync)."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(model(x), y)
    for p in params:
        p.grad = None
    loss.backward()
    sgd_step(params, bufs, lr, momentum, wd)
    return loss.detach()


@torch.no_grad()
def evaluate(model, images, labels, amp=False, batch=1000):
    """Mean cross-entropy and accuracy (%) over a whole split: eval mode, no augmentation."""
    model.eval()
    loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for i in range(0, len(labels), batch):
        x, y = cifar.normalize(images[i:i + batch]), labels[i:i + batch]
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            logits = model(x).float()  # (B, 10)
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train()
    return loss.item() / len(labels), 100.0 * correct.item() / len(labels)


def schedule(args):
    """The learning rate of the run in words, for the start line."""
    if args.lr_drops:
        return f"learning rate {args.lr:g}, divided by 10 at " \
               + ", ".join(f"{d:,}" for d in args.lr_drops)
    if args.iters <= STUDY_DROP:
        return f"learning rate {args.lr:g} for the whole run (the study's first {args.iters:,} " \
               f"iterations; it divides by 10 at {STUDY_DROP:,})"
    return f"learning rate {args.lr:g} for the whole run"


def other_run(ckpt, run, args, data_fingerprint):
    """How the checkpoint's run differs from this one, in words; None if this one continues it."""
    for k in SAME_RUN:
        if run[k] != vars(args)[k]:
            flag = f"--{k.replace('_', '-')}"
            return f"was trained with {flag} {run[k]}, but this run has {flag} {vars(args)[k]}"
    changed = sorted(set(run["lr_drops"]) ^ set(args.lr_drops))
    if changed and changed[0] < ckpt["iteration"]:  # later drops may change: not run yet
        return (f"was trained with --lr-drops {' '.join(map(str, run['lr_drops']))}, but this "
                f"run has --lr-drops {' '.join(map(str, args.lr_drops))}, a different schedule "
                f"before iteration {ckpt['iteration']}")
    if ckpt["data_fingerprint"] != data_fingerprint:
        return (f"was trained on other data ({ckpt['data_fingerprint']}) than --data "
                f"{args.data} ({data_fingerprint})")
    if ckpt["iteration"] > args.iters:
        return f"is at iteration {ckpt['iteration']}, past this run's --iters {args.iters}"
    return None


def resume_from(path, args, data_fingerprint):
    """The checkpoint to continue, validated, after checking that this run continues it.
    Without --resume, an existing checkpoint is never overwritten."""
    if not path.exists():
        if args.resume:
            raise FileNotFoundError(f"{path}: no such checkpoint file to --resume")
        return None
    ckpt, run = checkpoint.load_valid(path, resume=True)
    differs = other_run(ckpt, run, args, data_fingerprint)
    if not args.resume:
        if differs:
            raise ValueError(f"{path} exists and is another run (it {differs}): pick another "
                             f"--ckpt")
        raise ValueError(f"{path} exists: continue it with --resume, or pick another --ckpt")
    if differs:
        raise ValueError(f"{path} {differs}")
    return ckpt


def main(argv=None):
    """Check everything that could fail after the work, take the checkpoint's lock, train."""
    args = get_args(argv)
    device = checkpoint.pick_device(args.device)
    checkpoint.check_fits_in_memory(args.depth, args.width, args.plain, device)
    checkpoint.check_writable(args.ckpt)
    lock = checkpoint.RunLock(args.ckpt)
    try:
        return train(args, device, Path(args.ckpt))
    finally:
        lock.release()


def train(args, device, ckpt_path):
    stop = []  # why to stop early: a signal, or a closed stdout (checkpoint.catch_stops)
    checkpoint.say(f"reading CIFAR-10 from {args.data}", stop)

    # Data: the splits as uint8 tensors on the device.
    train_x, train_y, test_x, test_y = cifar.load_or_download(args.data, not args.no_download)
    data_fingerprint = f"{len(train_y)} train / {len(test_y)} test images, sha256 " \
                       f"{checkpoint.fingerprint(train_x, train_y, test_x, test_y)}"
    loader = cifar.Loader(train_x, train_y, args.batch, device, seed=args.seed)
    test_x, test_y = torch.as_tensor(test_x).to(device), torch.as_tensor(test_y).to(device)

    # Model and momentum buffers: fresh, or the state of the run to continue.
    ckpt = resume_from(ckpt_path, args, data_fingerprint)
    torch.manual_seed(args.seed)
    model = checkpoint.build_model(vars(args), ckpt and ckpt["model"], device)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    start, history, saved_at = 0, [], None
    if ckpt:
        start, history, saved_at = ckpt["iteration"], ckpt["history"], ckpt["iteration"]
        for b, saved in zip(bufs, ckpt["momentum"]):
            b.copy_(saved)
        loader.load_state_dict(ckpt["loader"])
    step_model = model
    if args.compile:
        step_model = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)

    def save(it):
        nonlocal saved_at
        saved_at = it
        checkpoint.save(ckpt_path, {
            "model": model.state_dict(), "iteration": it, "history": history, "args": vars(args),
            "data_fingerprint": data_fingerprint, "momentum": bufs, "loader": loader.state_dict()})

    def check_finite(loss, it, what):
        if not math.isfinite(loss):
            kept = "no checkpoint was written" if saved_at is None else \
                f"{ckpt_path} still holds iteration {saved_at}, saved before it"
            raise FloatingPointError(f"the {what} became {loss} by iteration {it}: training "
                                     f"diverged; {kept}")

    checkpoint.catch_stops(stop)
    checkpoint.say(f"{checkpoint.describe(vars(args))}: {sum(p.numel() for p in params):,} "
                   f"parameters on {device}; data: {data_fingerprint}; iterations {start} -> "
                   f"{args.iters}; {schedule(args)}", stop)
    it, loss_sum, n_sum = start, torch.zeros((), device=device), 0
    t_start = t_log = time.time()
    while it < args.iters and not stop:
        lr = lr_at(it, args.lr, args.lr_drops)
        x, y = next(loader)
        loss_sum += train_step(step_model, params, bufs, x, y, lr, args.momentum, args.wd,
                               args.amp)
        n_sum += 1
        it += 1  # iterations done
        if it % LOG_EVERY == 0:
            loss = loss_sum.item() / n_sum
            check_finite(loss, it, "training loss")
            now = time.time()
            eta = (now - t_start) / (it - start) * (args.iters - it)
            checkpoint.say(f"it {it:6d}/{args.iters} | loss {loss:.4f} | lr {lr:.4g} | "
                           f"{n_sum * args.batch / (now - t_log):6.0f} img/s | elapsed "
                           f"{now - t_start:7.1f} s | eta {eta:7.1f} s", stop)
            loss_sum, n_sum, t_log = torch.zeros((), device=device), 0, now
        if (args.eval_every and it % args.eval_every == 0) or it == args.iters:
            t_eval = time.time()
            full = it % checkpoint.TABLE_EVERY == 0 or it == args.iters  # a Table 1 row
            n = len(loader.labels) if full else min(TRAIN_SUBSET, len(loader.labels))
            train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n], args.amp)
            test_loss, test_acc = evaluate(model, test_x, test_y, args.amp)
            check_finite(train_loss, it, "train loss")
            check_finite(test_loss, it, "test loss")
            history.append({"iteration": it, "lr": lr, "train_loss": train_loss,
                            "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
                            "train_images": n})
            checkpoint.say(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% "
                           f"({n} images) | test loss {test_loss:.4f} acc {test_acc:.2f}%", stop)
            save(it)
            t_log += time.time() - t_eval  # images/s counts training time only
    if it < args.iters:  # stopped by a signal or a closed stdout
        save(it)
        print(f"{signal.Signals(stop[0]).name}: stopped at iteration {it}; {ckpt_path} saved, "
              f"continue with --resume", file=sys.stderr, flush=True)
        return 128 + stop[0]
    checkpoint.say(checkpoint.table(history), stop)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, FloatingPointError) as e:
        sys.exit(f"error: {e}")

"""Train ResNet-18 on CIFAR-10 as the study did (Fenglin Liu, "Investigating ResNet on the
Perspective of Experimental Results and Analysis", §2), and print its Table 1.

    python train.py --iters 50000 --batch 32                  # the study's run: a GPU job
    python train.py --iters 2000 --width 16 --lr-drops 1280 --eval-every 200 --ckpt quick.pt
    python train.py --resume --ckpt quick.pt                  # continue it where it stopped

The study: SGD with momentum 0.9 and weight decay 0.0002, batch 32, learning rate 0.1 divided
by 10 at iteration 32,000, 50,000 iterations (He et al. 2016 §4.2 divide again at 48,000:
`--lr-drops 32000 48000`). A shorter run without --lr-drops is the study's first part, at 0.1
throughout. The loop is written out: data, model, the SGD update by hand, lr_at(it),
evaluation at fixed iterations, a checkpoint that resumes exactly (checkpoint.Run keeps it
safe). --resume takes every setting from the checkpoint; a flag given with it may change only
what is still ahead (a larger --iters, a drop not reached yet).
"""
import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

import checkpoint
import cifar
import study
from resnet18 import BLOCKS, build, describe

LOG_EVERY = 100  # iterations between log lines (and one at the 10th, to show the pace early)
TRAIN_SUBSET = 10000  # images on which train accuracy is measured between Table 1 columns
MIN_WIDTH = 8  # narrower networks crash PyTorch's CPU backward of the 1x1 stride-2 shortcut
# (channels_last, fewer than 8 input channels) on AVX2 CPUs


def get_args(argv=None):
    """(settings, the flags given): every default is the study's, or He et al.'s."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("the study's SGD and schedule (its §2)")
    s.add_argument("--iters", type=positive, default=study.ITERS,
                   help="SGD iterations in all (default 50000, the study)")
    s.add_argument("--batch", type=positive, default=32,
                   help="images per iteration (default 32, the study)")
    s.add_argument("--lr", type=rate, default=0.1,
                   help="initial learning rate (default 0.1, the study)")
    s.add_argument("--momentum", type=rate, default=0.9,
                   help="SGD momentum, from 0 up to 1 (default 0.9, the study)")
    s.add_argument("--wd", type=rate, default=0.0002,
                   help="weight decay, on every parameter (default 0.0002, the study)")
    s.add_argument("--lr-drops", type=positive, nargs="*", metavar="IT",
                   help="iterations at which the learning rate is divided by 10 (default: the "
                        "study's 32000 when the run is longer, else none; He et al. use 32000 "
                        "48000; the flag with no value: a constant rate)")
    n = p.add_argument_group("the network (He et al. Table 1)")
    n.add_argument("--depth", type=int, choices=sorted(BLOCKS), default=18,
                   help="18 or 34 layers (default 18, the study)")
    n.add_argument("--plain", action="store_true",
                   help="drop every shortcut: He et al.'s plain network, the control")
    n.add_argument("--width", type=width, default=64,
                   help=f"channels of conv1; every stage scales with it (default 64, the "
                        f"paper; at least {MIN_WIDTH})")
    r = p.add_argument_group("the run")
    r.add_argument("--data", default="./data",
                   help="CIFAR-10 folder, downloaded there if it holds none (default ./data)")
    r.add_argument("--no-download", action="store_true",
                   help="fail instead of downloading missing data")
    r.add_argument("--seed", type=seed, default=0,
                   help="seed of the weights and of the batches (default 0)")
    r.add_argument("--eval-every", type=count, default=1000,
                   help="iterations between evaluations and checkpoints; 0: only at the end "
                        "(default 1000)")
    r.add_argument("--ckpt", default="run.pt",
                   help="checkpoint to write, a .pt file; the history goes beside it as .csv "
                        "(default run.pt)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --ckpt, with its own settings")
    r.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    r.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (default off: float32). Faster on GPUs and on CPUs "
                        "with AMX units (grep amx_bf16 /proc/cpuinfo); slower on other CPUs")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model; on CUDA with CUDA graphs (mode "
                        "reduce-overhead), never yet run on a GPU")
    args = p.parse_args(argv)
    unset = argparse.Namespace(**{k: p for k in vars(args)})  # p: a value no flag can have
    given = {k: v for k, v in vars(p.parse_args(argv, unset)).items() if v is not p}
    if args.momentum >= 1:
        p.error(f"--momentum {args.momentum}: must be from 0 up to, not including, 1")
    if args.lr == 0:
        p.error("--lr 0.0: must be above 0")
    if args.lr_drops is None:
        args.lr_drops = study.drops(args.iters)
    args.lr_drops = sorted(args.lr_drops)
    if not args.resume:  # a resume checks the schedule it continues (checkpoint.Run)
        try:
            checkpoint.check_drops(args.lr_drops, args.iters)
        except ValueError as e:
            p.error(str(e))
    return args, given


def lr_at(it, lr=0.1, drops=(study.DROP,)):
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


def main(argv=None):
    args, given = get_args(argv)
    with checkpoint.Run(args, given) as run:  # the lock; a resume's checkpoint and settings
        args, last = run.args, run.last
        args.data = os.path.abspath(args.data)  # so that visualize.py finds it from anywhere
        device = checkpoint.pick_device(args.device)
        checkpoint.check_fits_in_memory(args.depth, args.width, args.plain, device)
        run.say(f"reading CIFAR-10 from {args.data}")

        # Data: the splits as uint8 tensors on the device.
        train_x, train_y, test_x, test_y = cifar.load_or_download(args.data, not args.no_download)
        data = {"data_fingerprint": f"{len(train_y)} train / {len(test_y)} test images, sha256 "
                                    f"{checkpoint.fingerprint(train_x, train_y, test_x, test_y)}",
                "test_fingerprint": checkpoint.fingerprint(test_x, test_y)}
        run.check_data(data["data_fingerprint"])
        loader = cifar.Loader(train_x, train_y, args.batch, device, seed=args.seed)
        test_x, test_y = torch.as_tensor(test_x).to(device), torch.as_tensor(test_y).to(device)

        # Model and momentum buffers: fresh, or the state of the run to continue.
        torch.manual_seed(args.seed)
        model = build(vars(args), last and last["model"], device)
        params = list(model.parameters())
        bufs = [torch.zeros_like(p) for p in params]
        start, history = 0, []
        if last:
            start, history = last["iteration"], last["history"]
            for b, saved in zip(bufs, last["momentum"]):
                b.copy_(saved)
            loader.load_state_dict(last["loader"])
        step_model = model
        if args.compile:
            step_model = torch.compile(model, mode="reduce-overhead" if device.type == "cuda"
                                       else None)

        def state(it):
            return {"model": model.state_dict(), "iteration": it, "history": history,
                    "args": vars(args), **data, "momentum": bufs, "loader": loader.state_dict()}

        what = f"continuing from iteration {start:,} to {args.iters:,}, {run.changes}" if last \
            else f"iterations 0 -> {args.iters:,}"
        run.begin(f"{describe(vars(args))}: {sum(p.numel() for p in params):,} parameters on "
                  f"{device}; data: {data['data_fingerprint']}; {what}; {schedule(args)}")
        it, loss_sum, n_sum = start, torch.zeros((), device=device), 0
        t_train, t_evals, n_evals, t_log = 0.0, 0.0, 0, time.time()
        while it < args.iters and not run.stopped:
            lr = lr_at(it, args.lr, args.lr_drops)
            x, y = next(loader)
            loss_sum += train_step(step_model, params, bufs, x, y, lr, args.momentum, args.wd,
                                   args.amp)
            n_sum += 1
            it += 1  # iterations done
            if it % LOG_EVERY == 0 or it == start + 10:
                loss = loss_sum.item() / n_sum
                check_finite("training loss", loss, it, run)
                now = time.time()
                t_train += now - t_log
                left = t_train / (it - start) * (args.iters - it) \
                    + (t_evals / n_evals if n_evals else 0) * evals_left(it, args)
                run.say(f"it {it:6d}/{args.iters} | loss {loss:.4f} | lr {lr:.4g} | "
                        f"{n_sum * args.batch / (now - t_log):5.0f} img/s | "
                        f"left {hms(left)}{'' if n_evals else ' + evaluations'}")
                loss_sum, n_sum, t_log = torch.zeros((), device=device), 0, now
            if (args.eval_every and it % args.eval_every == 0) or it == args.iters:
                t_eval = time.time()
                full = it % study.TABLE_EVERY == 0 or it == args.iters  # a Table 1 column
                n = len(loader.labels) if full else min(TRAIN_SUBSET, len(loader.labels))
                train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n],
                                                 args.amp)
                test_loss, test_acc = evaluate(model, test_x, test_y, args.amp)
                check_finite("train loss", train_loss, it, run)
                check_finite("test loss", test_loss, it, run)
                history.append({"iteration": it, "lr": lr, "train_loss": train_loss,
                                "train_acc": train_acc, "test_loss": test_loss,
                                "test_acc": test_acc, "train_images": n})
                run.say(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% "
                        f"({n} images) | test loss {test_loss:.4f} acc {test_acc:.2f}%")
                run.save(state(it))
                t_evals, n_evals = t_evals + time.time() - t_eval, n_evals + 1
                t_log = time.time()  # the pace counts training time only
        if run.stopped:
            return run.stop(state(it))
        run.say(f"Table 1 of this run, beside the study's:\n{study.table(history)}")
        return 0


def check_finite(what, value, it, run):
    if not math.isfinite(value):
        raise FloatingPointError(f"the {what} became {value} by iteration {it:,}: training "
                                 f"diverged; {run.kept()}")


def schedule(args):
    """The learning rate of the run in words, for the start line."""
    if args.lr_drops:
        return f"learning rate {args.lr:g}, divided by 10 at " \
               + ", ".join(f"{d:,}" for d in args.lr_drops)
    if args.iters <= study.DROP:
        return f"learning rate {args.lr:g} for the whole run (the study's first " \
               f"{args.iters:,} iterations; it divides by 10 at {study.DROP:,})"
    return f"learning rate {args.lr:g} for the whole run"


def evals_left(it, args):
    """Evaluations after iteration `it`: every --eval-every iterations, and at the end."""
    every = args.eval_every or args.iters
    return args.iters // every - it // every + (args.iters % every != 0)


def hms(seconds):
    """A duration as a person reads it: '6 h 17 min 03 s', '2 min 49 s', '12 s'."""
    s = round(seconds)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


# --- Flag values: one clear line for a bad one ------------------------------------------------

def positive(text):
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def count(text):
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return int(text)


def width(text):
    if not (text.isascii() and text.isdigit()) or int(text) < MIN_WIDTH:
        raise argparse.ArgumentTypeError(f"must be an integer of at least {MIN_WIDTH}, "
                                         f"got {text!r}")
    return int(text)


def seed(text):
    if not (text.isascii() and text.isdigit()) or int(text) > 2**64 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64 - 1, got {text!r}")
    return int(text)


def rate(text):
    """A number that float32 can hold (the update multiplies float32 tensors by it), >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= torch.finfo(torch.float32).max:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 3.4e38, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(checkpoint.cli(main))

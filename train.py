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
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import checkpoint
import cifar
import study
from study import depth, integer, rate
from resnet18 import ResNet

LOG_EVERY = 100  # iterations between log lines (and one at the 10th, to show the pace early)
TRAIN_SUBSET = 10000  # images on which train accuracy is measured between Table 1 columns
KEPT = ("depth", "plain", "width", "batch", "lr", "momentum", "wd", "seed", "amp")  # the past


def get_args(argv=None):
    """(settings, the settings typed on the command line): every default is the study's."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("the study's SGD and schedule (its §2)")
    s.add_argument("--iters", type=integer(1), default=study.ITERS,
                   help="SGD iterations in all (default 50000)")
    s.add_argument("--batch", type=integer(1), default=32, help="images per step (default 32)")
    s.add_argument("--lr", type=rate, default=0.1, help="initial learning rate (default 0.1)")
    s.add_argument("--momentum", type=rate, default=0.9, help="SGD momentum, below 1 (default "
                   "0.9)")
    s.add_argument("--wd", type=rate, default=0.0002,
                   help="weight decay, on every parameter (default 0.0002)")
    s.add_argument("--lr-drops", type=integer(1), nargs="*", metavar="IT",
                   help="iterations at which the learning rate is divided by 10 (default: the "
                        "study's 32000 when the run is longer, else none; He et al. use 32000 "
                        "48000; the flag with no value: a constant rate)")
    n = p.add_argument_group("the network (He et al. Table 1)")
    n.add_argument("--depth", type=depth, default=18, help="18 or 34 layers (default 18)")
    n.add_argument("--plain", action="store_true",
                   help="drop every shortcut: He et al.'s plain network, the control")
    n.add_argument("--width", type=integer(8), default=64,
                   help="channels of conv1; every stage scales with it (default 64, the paper; "
                        "at least 8: narrower ones crash PyTorch's CPU backward of the 1x1 "
                        "stride-2 shortcut in channels_last on AVX2 CPUs)")
    r = p.add_argument_group("the run")
    r.add_argument("--data", default="./data",
                   help="CIFAR-10 folder, downloaded there if it holds none (default ./data)")
    r.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    r.add_argument("--seed", type=integer(0, 2**64 - 1), default=0,
                   help="seed of the weights and of the batches (default 0)")
    r.add_argument("--eval-every", type=integer(0), default=1000, help="iterations between "
                   "evaluations and checkpoints; 0: only at the end (default 1000)")
    r.add_argument("--ckpt", default="run.pt", help="checkpoint to write, a .pt file; the "
                   "history goes beside it as .csv (default run.pt)")
    r.add_argument("--resume", action="store_true", help="continue the run in --ckpt")
    r.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto)")
    r.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (default off: float32). Faster on GPUs and on CPUs "
                        "with AMX units (grep amx_bf16 /proc/cpuinfo); slower on other CPUs")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model (on CUDA: mode reduce-overhead, CUDA graphs)")
    unset = dict.fromkeys(study.SETTINGS)  # argparse fills in defaults only where unset
    args = p.parse_args(argv, argparse.Namespace(**unset))
    given = {k: v for k in unset if (v := getattr(args, k)) is not None}
    for k in unset:
        setattr(args, k, given.get(k, p.get_default(k)))
    if args.momentum >= 1 or args.lr == 0:
        p.error(f"--momentum {args.momentum} must be below 1, --lr {args.lr} above 0")
    try:  # a resume decides its schedule with the run's own settings (resumed)
        args.lr_drops = args.lr_drops if args.resume else study.schedule(args.iters, args.lr_drops)
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
    with checkpoint.Run(args.ckpt, args.resume) as run:  # the lock; a resume's checkpoint
        last, changes = run.last, ""
        if last:
            args, changes = resumed(args, given, last, run.path)
        args.data = os.path.abspath(args.data)  # so that visualize.py finds it from anywhere
        device = checkpoint.pick_device(args.device)
        exact(device)
        check_fits(args, device)
        run.say(f"reading CIFAR-10 from {args.data}")
        train_x, train_y, test_x, test_y = cifar.load_or_download(args.data, not args.no_download)
        data = {"data_fingerprint": f"{len(train_y)} train / {len(test_y)} test images, sha256 "
                                    f"{cifar.fingerprint(train_x, train_y, test_x, test_y)}",
                "test_fingerprint": cifar.fingerprint(test_x, test_y)}
        if last and last["data_fingerprint"] != data["data_fingerprint"]:
            raise ValueError(f"{run.path} was trained on other data ({last['data_fingerprint']})"
                             f" than --data {args.data} ({data['data_fingerprint']})")
        loader = cifar.Loader(train_x, train_y, args.batch, device, seed=args.seed)
        test = torch.as_tensor(test_x).to(device), torch.as_tensor(test_y).to(device)
        torch.manual_seed(args.seed)
        model = ResNet(args.depth, width=args.width, plain=args.plain)
        if last:
            model.load_state_dict(last["model"])
            loader.load_state_dict(last["loader"])
        model.to(device, memory_format=torch.channels_last)  # the fast layout for convolutions
        bufs = [torch.zeros_like(p) for p in model.parameters()]
        for b, saved in zip(bufs, last["momentum"] if last else []):
            b.copy_(saved)
        what = f"continuing from iteration {last['iteration']:,} to {args.iters:,}, " \
               f"{changes}" if last else f"iterations 0 -> {args.iters:,}"
        run.begin(f"{model.name}: {sum(p.numel() for p in model.parameters()):,} parameters "
                  f"on {device}; data: {data['data_fingerprint']}; {what}; "
                  f"{study.in_words(args.lr, args.lr_drops, args.iters)}")
        return loop(run, args, model, bufs, loader, test, data, last)


def loop(run, args, model, bufs, loader, test, data, last):
    """The training loop: a step per iteration, a log line every LOG_EVERY, an evaluation and a
    checkpoint every --eval-every and at the end."""
    params, device = list(model.parameters()), bufs[0].device
    step_model = compiled(model, device) if args.compile else model
    start, history = (last["iteration"], last["history"]) if last else (0, [])
    before = last.get("provenance", {}).get("seconds", 0.0) if last else 0.0
    it, loss_sum, n_sum, t0 = start, torch.zeros((), device=device), 0, time.time()
    t_log = t0

    def state(it):
        return {"model": model.state_dict(), "iteration": it, "history": history,
                "args": vars(args), **data, "momentum": bufs, "loader": loader.state_dict(),
                "provenance": provenance(device, before + time.time() - t0)}

    while it < args.iters and not run.stopped:
        lr = lr_at(it, args.lr, args.lr_drops)
        x, y = next(loader)
        loss_sum += train_step(step_model, params, bufs, x, y, lr, args.momentum, args.wd,
                               args.amp)
        n_sum, it = n_sum + 1, it + 1  # `it`: iterations done
        if it % LOG_EVERY == 0 or it == start + 10:
            loss, now = loss_sum.item() / n_sum, time.time()
            check_finite("training loss", loss, it, run)
            left = (now - t0) / (it - start) * (args.iters - it)  # at the pace so far, evals too
            run.say(f"it {it:6d}/{args.iters} | loss {loss:.4f} | lr {lr:.4g} | "
                    f"{n_sum * args.batch / (now - t_log):5.0f} img/s | left {hms(left)}")
            loss_sum, n_sum, t_log = torch.zeros((), device=device), 0, time.time()
        if (args.eval_every and it % args.eval_every == 0) or it == args.iters:
            full = it % study.TABLE_EVERY == 0 or it == args.iters  # a Table 1 column
            n = len(loader.labels) if full else min(TRAIN_SUBSET, len(loader.labels))
            train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n],
                                             args.amp)
            test_loss, test_acc = evaluate(model, *test, args.amp)
            check_finite("train loss", train_loss, it, run)
            check_finite("test loss", test_loss, it, run)
            history.append({"iteration": it, "lr": lr, "train_loss": train_loss,
                            "train_acc": train_acc, "test_loss": test_loss,
                            "test_acc": test_acc, "train_images": n})
            run.say(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% "
                    f"({n} images) | test loss {test_loss:.4f} acc {test_acc:.2f}%")
            run.save(state(it))
            t_log = time.time()
    if run.stopped:
        return run.stop(state(it))
    run.say(f"Table 1 of this run, beside the study's:\n{study.table(history)}")
    return 0


def resumed(args, given, last, path):
    """The settings of a resumed run, and what changed, in words: each flag given, else the
    checkpoint's. A flag that would change the iterations already run is refused."""
    saved, done = last["args"], last["iteration"]
    for k in KEPT:
        if k in given and given[k] != saved[k]:
            flag = "--" + k.replace("_", "-")
            raise ValueError(f"{path} was trained with {flag} {saved[k]}; {flag} {given[k]} "
                             f"would change its {done:,} iterations run: leave it out")
    new = argparse.Namespace(**{**vars(args), **{k: saved[k] for k in study.SETTINGS}, **given})
    if new.iters < done:
        raise ValueError(f"{path} is at iteration {done:,}, past --iters {new.iters}")
    try:
        new.lr_drops = study.schedule(new.iters, given.get("lr_drops"), saved, done)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

    def show(v):
        return " ".join(map(str, v)) or "(none)" if isinstance(v, list) else v
    notes = [f"--{k.replace('_', '-')} {show(saved[k])} -> {show(v)}" for k, v in vars(new).items()
             if k in study.SETTINGS and k != "data" and v != saved[k]]
    return new, f"changing {', '.join(notes)}" if notes else "with the run's own settings"


def exact(device):
    """On CUDA: the same convolution algorithms every run (cuDNN's deterministic ones, no
    autotuning), so that a resumed run is bit-exact, and float32 as float32 (no TF32: --amp is
    the fast path). The CPU is deterministic already."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def compiled(model, device):
    """torch.compile: on CUDA with CUDA graphs (mode reduce-overhead: one launch per step)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def check_fits(args, device):
    """A clear error, before any allocation, for a network too large for `device`."""
    with torch.device("meta"):
        model = ResNet(args.depth, width=args.width, plain=args.plain)
    need = 3 * 4 * sum(p.numel() for p in model.parameters())  # weights, gradients, momentum
    have = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" \
        else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        raise ValueError(f"--width {args.width}: {model.name} would need {need / 2**30:.1f} "
                         f"GiB for its weights, gradients and momentum alone, more than the "
                         f"{have / 2**30:.1f} GiB of {device}")


def provenance(device, seconds):
    """What ran: the device, torch, the training time, and a hash of the code that trained."""
    code = hashlib.sha256(b"".join(Path(__file__).with_name(f).read_bytes()
                                   for f in ("resnet18.py", "cifar.py", "train.py")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"device": f"{device} ({name})", "torch": str(torch.__version__), "seconds": seconds,
            "source": code.hexdigest()[:12]}


def check_finite(what, value, it, run):
    if not math.isfinite(value):
        raise FloatingPointError(f"the {what} became {value} by iteration {it:,}: training "
                                 f"diverged; {run.kept()}")


def hms(seconds):
    """A duration as a person reads it: '6 h 17 min 03 s', '2 min 49 s', '12 s'."""
    s = round(seconds)
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


if __name__ == "__main__":
    sys.exit(checkpoint.cli(main))

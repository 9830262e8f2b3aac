"""Train ResNet-18 on CIFAR-10 as the study did, and print its Table 1.

The study: SGD with momentum 0.9 and weight decay 0.0002, batch 32, learning rate 0.1
divided by 10 at iteration 32,000, 50,000 iterations (He et al. 2016 §4.2 divide it again at
48,000: `--lr-drops 32000 48000`). The loop is written out: data, model, the SGD update by
hand, lr_at(it), evaluation at fixed iterations, an atomic checkpoint that resumes exactly.

    python train.py --iters 50000 --batch 32                 # the study's run (a GPU job)
    python train.py --data ../shared/cifar10/cifar-10-batches-bin --iters 2000 --width 16 --lr-drops 1280
    python train.py --iters 50000 --resume                   # continue run.pt where it stopped
"""
import argparse
import csv
import hashlib
import io
import math
import os
import pickle
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import cifar
from resnet18 import ResNet18

STUDY_TEST_ACC = {10000: 79.60, 20000: 83.40, 30000: 87.83, 40000: 91.06, 50000: 93.56}  # Table 1, %
TABLE_EVERY = 10000  # iterations between the rows of Table 1
TRAIN_SUBSET = 10000  # images on which train accuracy is measured between the rows
LOG_EVERY = 100  # iterations between log lines
HISTORY_KEYS = ("iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "train_images")
SAME_RUN = ("width", "batch", "lr", "momentum", "wd", "seed")  # flags a resumed run must keep


def positive(text):
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=positive, default=50000, help="SGD iterations in all (default 50000, the study)")
    p.add_argument("--batch", type=positive, default=32, help="images per iteration (default 32, the study)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1, the study)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9, the study)")
    p.add_argument("--wd", type=float, default=0.0002, help="weight decay, on every parameter (default 0.0002, the study)")
    p.add_argument("--lr-drops", type=positive, nargs="*", default=[32000], metavar="IT",
                   help="iterations at which the learning rate is divided by 10 (default 32000, the study; "
                        "He et al. use 32000 48000; none for a constant rate)")
    p.add_argument("--eval-every", type=int, default=1000,
                   help="iterations between evaluations and checkpoints; 0: only at the end (default 1000)")
    p.add_argument("--data", default="./data", help="CIFAR-10 folder, downloaded there if absent (default ./data)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    p.add_argument("--ckpt", default="run.pt", help="checkpoint to write; the history goes beside it as .csv (default run.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --ckpt up to --iters")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto: CUDA when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batches (default 0)")
    p.add_argument("--width", type=positive, default=64, help="channels of conv1; every stage scales with it (default 64, the paper)")
    p.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast, for GPUs and CPUs with bfloat16 units (default off: float32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model; on CUDA with CUDA graphs (mode reduce-overhead). Off by default")
    args = p.parse_args(argv)
    if args.eval_every < 0:
        p.error(f"--eval-every must be 0 or more, got {args.eval_every}")
    if args.lr <= 0 or args.wd < 0 or not 0 <= args.momentum < 1:
        p.error("need --lr > 0, --wd >= 0 and 0 <= --momentum < 1")
    if any(d >= args.iters for d in args.lr_drops):
        p.error(f"--lr-drops {' '.join(map(str, args.lr_drops))} must all be below --iters {args.iters}; "
                "give drops inside the run, or --lr-drops with no value for a constant rate")
    args.lr_drops = sorted(args.lr_drops)
    return args


def lr_at(it, lr=0.1, drops=(32000,)):
    """The learning rate of iteration `it` (0-based): `lr`, divided by 10 at each drop passed."""
    return lr / 10 ** sum(it >= d for d in drops)


@torch.no_grad()
def sgd_step(params, bufs, lr, momentum, wd):
    """One step of SGD with momentum and weight decay, as torch.optim.SGD (dampening 0, no Nesterov).

    For every parameter p with gradient g and momentum buffer buf (zeros before the first step,
    so that the first step gives buf = d exactly):
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


def train_step(model, params, bufs, x, y, lr, args):
    """Forward, backward and update on one batch; returns the loss as a device tensor (no sync)."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=args.amp):
        loss = F.cross_entropy(model(x), y)
    for p in params:
        p.grad = None
    loss.backward()
    sgd_step(params, bufs, lr, args.momentum, args.wd)
    return loss.detach()


@torch.no_grad()
def evaluate(model, images, labels, amp=False, batch=1000):
    """Mean cross-entropy and accuracy (%) over a whole split: eval mode, no augmentation."""
    model.eval()
    loss = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for i in range(0, len(labels), batch):
        x = cifar.normalize(images[i:i + batch]).contiguous(memory_format=torch.channels_last)
        y = labels[i:i + batch]
        with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
            logits = model(x).float()  # (B, 10)
        loss += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train()
    return loss.item() / len(labels), 100.0 * correct.item() / len(labels)


def table(history):
    """Table 1 of the study, in its layout: the rows at every 10,000th iteration and the last one,
    or every evaluation of a run too short for two such rows."""
    rows = [h for h in history if h["iteration"] % TABLE_EVERY == 0 or h is history[-1]]
    if len(rows) < 2:
        rows = history
    lines = ["| Iterations | Train error (%) | Train accuracy (%) | Test error (%) | Test accuracy (%) | Study test accuracy (%) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for h in rows:
        study = STUDY_TEST_ACC.get(h["iteration"])
        lines.append(f"| {h['iteration']:,} | {100 - h['train_acc']:.2f} | {h['train_acc']:.2f} | "
                     f"{100 - h['test_acc']:.2f} | {h['test_acc']:.2f} | {'' if study is None else f'{study:.2f}'} |")
    return "\n".join(lines)


def save_atomic(path, write):
    """write(file) into path.tmp, flush it to disk, then rename it over `path` in one step."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {path} ({e}); the previous file, if any, is intact") from None


def save_history_csv(path, history):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_KEYS)
    writer.writeheader()
    writer.writerows(history)
    save_atomic(path, lambda f: f.write(text.getvalue().encode()))


def load_checkpoint(path, keys=("model", "iteration", "history", "args")):
    """torch.load with weights_only=True (no code in a checkpoint can run), and one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles; the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: not a readable checkpoint of train.py (it holds Python objects beyond "
                         f"tensors and plain data, which are never loaded: loading them could run code)") from None
    except Exception as e:  # a truncated file, or not a checkpoint at all
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable checkpoint of train.py ({reason[:120]})") from None
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path}: not a checkpoint of train.py, missing {', '.join(missing)}")
    return ckpt


def build_model(width, state=None, device="cpu"):
    """ResNet18 of `width`, with the weights of a state_dict if given; a mismatch is one clear error."""
    model = ResNet18(width=width)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise ValueError(f"the checkpoint's weights do not fit ResNet18(width={width}): {detail[:300]}") from None
    return model.to(device, memory_format=torch.channels_last)


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device (use cpu, cuda or cuda:N)") from None


def load_data(root, download):
    """(train images, train labels, test images, test labels), downloading into an empty `root`."""
    folder = cifar.find_folder(root)
    nothing_there = not any((folder / n).exists() for n in cifar.TRAIN_FILES + cifar.TEST_FILES)
    if download and nothing_there:
        cifar.download_cifar10(root)
    return (*cifar.load_cifar10(root, train=True), *cifar.load_cifar10(root, train=False))


def fingerprint(*arrays):
    """A short hash of the data, stored in the checkpoint so --resume can tell a different data set."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def main(argv=None):
    args = get_args(argv)
    device = pick_device(args.device)
    ckpt_path = Path(args.ckpt)
    if ckpt_path.exists() and not args.resume:
        raise ValueError(f"{ckpt_path} exists: continue it with --resume, or pick another --ckpt")

    # Data: the splits as uint8 tensors on the device.
    train_x, train_y, test_x, test_y = load_data(args.data, not args.no_download)
    data_id = f"{len(train_y)} train / {len(test_y)} test images, sha256 {fingerprint(train_x, train_y, test_x, test_y)}"
    loader = cifar.Loader(train_x, train_y, args.batch, device, seed=args.seed)
    test_x, test_y = torch.as_tensor(test_x).to(device), torch.as_tensor(test_y).to(device)

    # Model, momentum buffers, and the state of a run to resume.
    torch.manual_seed(args.seed)
    start, history, state = 0, [], None
    if args.resume:
        ckpt = load_checkpoint(ckpt_path, keys=("model", "iteration", "history", "args", "data", "momentum", "loader"))
        for k in SAME_RUN:
            if ckpt["args"].get(k) != vars(args)[k]:
                raise ValueError(f"{ckpt_path} was trained with --{k.replace('_', '-')} {ckpt['args'].get(k)}, "
                                 f"but this run has --{k.replace('_', '-')} {vars(args)[k]}")
        changed = sorted(set(ckpt["args"]["lr_drops"]) ^ set(args.lr_drops))
        if changed and changed[0] < ckpt["iteration"]:  # later drops may change: that part is not run yet
            raise ValueError(f"{ckpt_path} was trained with --lr-drops {' '.join(map(str, ckpt['args']['lr_drops']))}, "
                             f"but this run has --lr-drops {' '.join(map(str, args.lr_drops))}, a different schedule "
                             f"before iteration {ckpt['iteration']}")
        if ckpt["data"] != data_id:
            raise ValueError(f"{ckpt_path} was trained on other data ({ckpt['data']}) than --data {args.data} ({data_id})")
        start, history, state = ckpt["iteration"], ckpt["history"], ckpt["model"]
    model = build_model(args.width, state, device)
    params = list(model.parameters())
    bufs = [torch.zeros_like(p) for p in params]
    if args.resume:
        if [b.shape for b in bufs] != [getattr(m, "shape", None) for m in ckpt["momentum"]]:
            raise ValueError(f"{ckpt_path}: its momentum buffers do not fit ResNet18(width={args.width})")
        for b, saved in zip(bufs, ckpt["momentum"]):
            b.copy_(saved)
        loader.load_state_dict(ckpt["loader"])
    step_model = model
    if args.compile:
        step_model = torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)

    def save(it):
        snapshot = {"model": model.state_dict(), "iteration": it, "history": history, "args": vars(args),
                "data": data_id, "momentum": bufs, "loader": loader.state_dict()}
        save_atomic(ckpt_path, lambda f: torch.save(snapshot, f))
        save_history_csv(ckpt_path.with_suffix(".csv"), history)

    def check_finite(loss, it):
        if not math.isfinite(loss):
            kept = f"the last good checkpoint ({ckpt_path}) is kept" if ckpt_path.exists() else "no checkpoint was written"
            raise FloatingPointError(f"the loss became {loss} by iteration {it}: training diverged "
                                     f"(learning rate too high?); {kept}")

    # Ctrl-C and SIGTERM only raise a flag; the loop saves and stops before the next iteration.
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))

    print(f"ResNet18(width={args.width}): {sum(p.numel() for p in params):,} parameters on {device}; "
          f"data: {data_id}; iterations {start} -> {args.iters}", flush=True)
    it, loss_sum, n_sum = start, torch.zeros((), device=device), 0
    t_start = t_log = time.time()
    while it < args.iters and not stop:
        lr = lr_at(it, args.lr, args.lr_drops)
        x, y = next(loader)
        loss_sum += train_step(step_model, params, bufs, x.contiguous(memory_format=torch.channels_last), y, lr, args)
        n_sum += 1
        it += 1  # iterations done
        if it % LOG_EVERY == 0:
            loss = loss_sum.item() / n_sum
            check_finite(loss, it)
            now = time.time()
            eta = (now - t_start) / (it - start) * (args.iters - it)
            print(f"it {it:6d}/{args.iters} | loss {loss:.4f} | lr {lr:.4g} | {n_sum * args.batch / (now - t_log):6.0f} img/s"
                  f" | elapsed {now - t_start:7.1f} s | eta {eta:7.1f} s", flush=True)
            loss_sum, n_sum, t_log = torch.zeros((), device=device), 0, now
        if (args.eval_every and it % args.eval_every == 0) or it == args.iters:
            t_eval = time.time()
            n = len(loader.labels) if it % TABLE_EVERY == 0 or it == args.iters else TRAIN_SUBSET
            train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n], args.amp)
            test_loss, test_acc = evaluate(model, test_x, test_y, args.amp)
            check_finite(train_loss, it)
            history.append({"iteration": it, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                            "test_loss": test_loss, "test_acc": test_acc, "train_images": min(n, len(loader.labels))})
            print(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% ({history[-1]['train_images']} images)"
                  f" | test loss {test_loss:.4f} acc {test_acc:.2f}%", flush=True)
            save(it)
            t_log += time.time() - t_eval  # images/s counts training time only
    if it < args.iters:  # stopped by a signal
        save(it)
        print(f"{signal.Signals(stop[0]).name}: stopped at iteration {it}; {ckpt_path} saved, "
              f"continue with --resume", flush=True)
        return 128 + stop[0]
    print(table(history))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, FloatingPointError) as e:
        sys.exit(f"error: {e}")

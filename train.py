"""Train ResNet-18 on CIFAR-10 as the study did (Fenglin Liu, "Investigating ResNet on the
Perspective of Experimental Results and Analysis", §2), and print its Table 1.

    python train.py --iters 50000 --batch 32                  # the study's run: a GPU job
    python train.py --iters 2000 --width 16 --lr-drops 1280 --eval-every 200 --ckpt quick.pt
    python train.py --resume --ckpt quick.pt                  # continue it where it stopped

The study: SGD with momentum 0.9 and weight decay 0.0002, batch 32, learning rate 0.1 divided
by 10 at iteration 32,000, 50,000 iterations (He et al. 2016 §4.2 divide again at 48,000:
`--lr-drops 32000 48000`). In that order: the flags, `lr_at`, the SGD update by hand, a step,
evaluation, `main`, the loop, Table 1; then where a run starts, and the checkpoint: an atomic
save, a safe load. Ctrl-C stops the loop between two steps, saves, and prints the command that
continues it.
"""
import argparse
import hashlib
import os
import pickle
import shlex
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cifar
from resnet18 import ResNet

ITERS = 50000  # the study's iterations in all
DROP = 32000  # the study's one learning-rate drop (divide by 10)
TEST_ACC = {10000: 79.60, 20000: 83.40, 30000: 87.83, 40000: 91.06, 50000: 93.56}  # % (Table 1)
TABLE_EVERY = 10000  # iterations between the columns of Table 1
LOG_EVERY = 100  # iterations between log lines (and one at the 10th, to show the pace early)
TRAIN_SUBSET = 10000  # images on which train accuracy is measured between Table 1 columns
# The study's train accuracy is of 128 images: every value in its train columns is k / 128
# (82.03 % = 105 / 128, 100 % = 128 / 128). Its measure, the training steps' own predictions on
# the last 128 training images before an evaluation (augmented, train mode), is recorded too.
STUDY_TRAIN_IMAGES = 128
SETTINGS = ("iters", "batch", "lr", "momentum", "wd", "lr_drops", "depth", "plain", "width",
            "seed", "eval_every", "amp", "data")  # what a checkpoint keeps of its run
RESUME_MAY_CHANGE = ("iters", "lr_drops", "data")  # data: the same images, elsewhere


def get_args(argv=None, run=None):
    """The flags, with the study's settings as defaults; resuming, the run's own (`run`)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("the study's SGD and schedule (its §2)")
    s.add_argument("--iters", type=at_least(1), default=ITERS, help="iterations (default 50000)")
    s.add_argument("--batch", type=at_least(1), default=32, help="images per step (default 32)")
    s.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    s.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    s.add_argument("--wd", type=float, default=0.0002,
                   help="weight decay, on every parameter (default 0.0002)")
    s.add_argument("--lr-drops", type=at_least(1), nargs="*", metavar="IT",
                   help="iterations at which the learning rate is divided by 10 (default: the "
                        "study's 32000 when the run is longer, else none; He et al. use 32000 "
                        "48000; the flag with no value: a constant rate)")
    n = p.add_argument_group("the network (He et al. Table 1)")
    n.add_argument("--depth", type=int, choices=(18, 34), default=18, help="layers (default 18)")
    n.add_argument("--plain", action="store_true",
                   help="drop every shortcut: He et al.'s plain network, the control")
    n.add_argument("--width", type=at_least(8), default=64, help="channels of conv1, every "
                   "stage scaled with it (default 64, the paper's; at least 8: narrower ones "
                   "crash PyTorch's CPU backward of a strided 1x1 convolution on AVX2 CPUs)")
    r = p.add_argument_group("the run")
    r.add_argument("--data", type=os.path.abspath, default="./data",
                   help="CIFAR-10 folder, downloaded there if it holds none (default ./data)")
    r.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    r.add_argument("--seed", type=at_least(0), default=0, help="seed of weights and batches "
                   "(default 0)")
    r.add_argument("--eval-every", type=at_least(0), default=1000, help="iterations between "
                   "evaluations and checkpoints; 0: only at the end (default 1000)")
    r.add_argument("--ckpt", default="run.pt", help="checkpoint to write (default run.pt)")
    r.add_argument("--resume", action="store_true", help="continue the run in --ckpt, with its "
                   "settings (of which --iters, --lr-drops and --data may change)")
    r.add_argument("--device", type=parse_device, default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)")
    r.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (default off: float32). Faster on GPUs and on CPUs "
                        "with bfloat16 units (AMX or AVX-512 BF16: grep bf16 /proc/cpuinfo); "
                        "slower on other CPUs")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model (on CUDA: mode reduce-overhead, CUDA graphs)")
    if run:
        p.set_defaults(**{k: run[k] for k in SETTINGS})
    args = p.parse_args(argv)
    if not (args.lr > 0 and 0 <= args.momentum < 1 and args.wd >= 0):
        p.error(f"--lr {args.lr} must be above 0, --momentum {args.momentum} from 0 to below 1, "
                f"--wd {args.wd} at least 0")
    return args


def at_least(low):
    """An argparse type: an integer of at least `low`."""
    def integer(text):
        if int(text) < low:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {low}, got {text}")
        return int(text)
    return integer


def parse_device(name):
    """An argparse type: auto (the GPU when there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if name != "cpu" and (kind != "cuda" or int(index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{name}: not a device of this machine")
    return torch.device(name)


def schedule(iters, lr_drops=None):
    """The iterations at which the learning rate is divided by 10: --lr-drops when given, else
    the study's DROP where the run reaches it (a shorter run is the study's first part)."""
    if lr_drops is not None:
        return sorted(lr_drops)
    return [DROP] if iters > DROP else []


def lr_at(it, lr=0.1, drops=(DROP,)):
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
    Each line below does that for all parameters at once: one kernel launch per line instead of
    one per parameter, which on a GPU is most of a small network's step time.
    """
    grads = [p.grad for p in params]
    torch._foreach_add_(grads, params, alpha=wd)
    torch._foreach_mul_(bufs, momentum)
    torch._foreach_add_(bufs, grads)
    torch._foreach_add_(params, bufs, alpha=-lr)


def train_step(model, params, bufs, x, y, lr, momentum, wd, amp=False):
    """Forward, backward and update on one batch. Returns, as device tensors (no sync), the loss
    and which images this forward pass classified right: {"loss": (), "correct": (B,) bool}."""
    with torch.autocast(x.device.type, torch.bfloat16, enabled=amp):
        logits = model(x)  # (B, 10)
        loss = F.cross_entropy(logits, y)
    for p in params:
        p.grad = None
    loss.backward()
    sgd_step(params, bufs, lr, momentum, wd)
    return {"loss": loss.detach(), "correct": logits.detach().argmax(1) == y}


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
    args, start, model = starting_point(argv)  # a new run, or the one in --ckpt
    deterministic_cuda(args.device)
    print(f"reading CIFAR-10 from {args.data}", flush=True)
    train_x, train_y, test_x, test_y = cifar.load_or_download(args.data, not args.no_download)
    data = f"{len(train_y)} train / {len(test_y)} test images, sha256 " \
           f"{cifar.fingerprint(train_x, train_y, test_x, test_y)}"
    if "data_fingerprint" in start and start["data_fingerprint"] != data:
        raise ValueError(f"{args.ckpt} was trained on other data ({start['data_fingerprint']}) "
                         f"than --data {args.data} ({data})")
    loader = cifar.Loader(train_x, train_y, args.batch, args.device, seed=args.seed)
    if start["loader"]:
        loader.load_state_dict(start["loader"])
    model.to(args.device, memory_format=torch.channels_last).train()  # the fast layout
    bufs = [torch.zeros_like(p) for p in model.parameters()]  # momentum: zero at the start
    for buf, saved in zip(bufs, start["momentum"]):
        buf.copy_(saved)
    run = {"args": {k: getattr(args, k) for k in SETTINGS}, "data_fingerprint": data,
           "test_fingerprint": cifar.fingerprint(test_x, test_y)}  # what the checkpoint keeps
    test_images = torch.as_tensor(test_x).to(args.device), torch.as_tensor(test_y).to(args.device)
    step_model = compiled(model, args.device) if args.compile else model
    return train(model, step_model, bufs, loader, test_images, start, run, Path(args.ckpt))


def train(model, step_model, bufs, loader, test_images, start, run, path):
    """The study's loop from `start`: a step per iteration, a log line every LOG_EVERY, an
    evaluation and a checkpoint every --eval-every and at the end, then Table 1. Ctrl-C and
    SIGTERM stop it between two steps, with a checkpoint. run: the settings and the data."""
    s, params, device = run["args"], list(model.parameters()), bufs[0].device
    drops, it, history = schedule(s["iters"], s["lr_drops"]), start["iteration"], start["history"]
    # the study's measure: right or not, each training image since the last evaluation
    recent = start.get("recent", torch.zeros(0, dtype=torch.bool)).to(device)
    spent = start.get("provenance", {}).get("seconds", 0.0)  # seconds trained before this start
    print(f"{model.name}: {sum(p.numel() for p in params):,} parameters on {device}; data: "
          f"{run['data_fingerprint']}; iterations {it:,} -> {s['iters']:,}; learning rate "
          f"{s['lr']:g}, divided by 10 at: {', '.join(f'{d:,}' for d in drops) or 'none'}",
          flush=True)
    first, t0, t_log, steps, stop = it, time.time(), time.time(), [], Stop()
    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while it < s["iters"] and not stop.signal:
            lr = lr_at(it, s["lr"], drops)
            x, y = next(loader)
            steps.append(train_step(step_model, params, bufs, x, y, lr, s["momentum"], s["wd"],
                                    s["amp"]))
            recent = torch.cat([recent, steps[-1]["correct"]])[-STUDY_TRAIN_IMAGES:]
            it += 1  # iterations done
            if it % LOG_EVERY == 0 or it == first + 10:
                log(it, s["iters"], steps, lr, t_log, (time.time() - t0) / (it - first))
                steps, t_log = [], time.time()
            if (s["eval_every"] and it % s["eval_every"] == 0) or it == s["iters"]:
                full = it % TABLE_EVERY == 0 or it == s["iters"]  # a column of Table 1
                history.append(history_row(model, loader, *test_images, it, lr, recent,
                                           s["amp"], full))
                recent = recent[:0]  # the next row's images: those after this evaluation
                save(path, checkpoint(model, bufs, loader, it, history, recent, run,
                                      spent + time.time() - t0))
                t_log = time.time()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stop.signal:
        save(path, checkpoint(model, bufs, loader, it, history, recent, run,
                              spent + time.time() - t0))
        print(f"{signal.Signals(stop.signal).name}: stopped at iteration {it:,}; {path} saved; "
              f"continue with: {command(path)}", file=sys.stderr)
        return 128 + stop.signal
    print(f"Table 1 of this run, beside the study's:\n{table(history)}")
    return 0


class Stop:
    """The handler of Ctrl-C and SIGTERM: it notes the signal, which the loop reads between two
    steps, so that a stop never lands inside a step or a save."""
    signal = None

    def __call__(self, signum, frame):
        self.signal = signum


def log(it, iters, steps, lr, since, pace):
    """One line: the mean loss and accuracy of the training `steps` since the last line (the
    steps' own predictions, augmented), the rate, images/s, and the time left at `pace`."""
    loss = torch.stack([step["loss"] for step in steps]).float().mean().item()
    acc = 100.0 * torch.cat([step["correct"] for step in steps]).float().mean().item()
    images = sum(len(step["correct"]) for step in steps)
    h, m = divmod(round(pace * (iters - it) / 60), 60)
    print(f"it {it:6d}/{iters} | loss {loss:.4f} | acc {acc:5.2f}% | lr {lr:.4g} | "
          f"{images / (time.time() - since):5.0f} img/s | left {h} h {m:02d} min", flush=True)


def history_row(model, loader, test_x, test_y, it, lr, recent, amp, full):
    """A row of the history, printed: train (all images if `full`, else TRAIN_SUBSET) and test
    loss and accuracy, and the study's measure: how many of the `recent` images their steps
    classified right."""
    n = len(loader.labels) if full else min(TRAIN_SUBSET, len(loader.labels))
    train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n], amp)
    test_loss, test_acc = evaluate(model, test_x, test_y, amp)
    step_acc = 100.0 * recent.float().mean().item()
    print(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% ({n} images) | "
          f"as trained, last {len(recent)}: {step_acc:.2f}% | test loss {test_loss:.4f} acc "
          f"{test_acc:.2f}%", flush=True)
    return {"iteration": it, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
            "test_loss": test_loss, "test_acc": test_acc, "train_images": n,
            "step_acc": step_acc, "step_images": len(recent)}


def table(history):
    """Table 1 in the study's layout, iterations as columns: every 10,000th iteration and the
    last one, or every evaluation of a run too short for two such columns."""
    if not history:
        return "no evaluation yet: no Table 1"
    cols = [h for h in history if h["iteration"] % TABLE_EVERY == 0 or h is history[-1]]
    if len(cols) < 2:
        cols = history
    seen = {h["train_images"] for h in cols}
    train = f"{seen.pop():,} images, " if len(seen) == 1 else ""  # else: the subset, then all
    rows = [("Iterations", [f"{h['iteration']:,}" for h in cols]),
            (f"Train error (%), {train}no augmentation",
             [f"{100 - h['train_acc']:.2f}" for h in cols]),
            (f"Train accuracy (%), {train}no augmentation",
             [f"{h['train_acc']:.2f}" for h in cols]),
            (f"Train accuracy (%), last {STUDY_TRAIN_IMAGES} training images (the study's "
             f"measure)", [step_cell(h) for h in cols]),
            ("Test error (%)", [f"{100 - h['test_acc']:.2f}" for h in cols]),
            ("Test accuracy (%)", [f"{h['test_acc']:.2f}" for h in cols])]
    if any(h["iteration"] in TEST_ACC for h in cols):  # the study's row, where it has columns
        rows.append(("Study test accuracy (%)", [f"{TEST_ACC[h['iteration']]:.2f}"
                                                 if h["iteration"] in TEST_ACC else "-"
                                                 for h in cols]))
    lines = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    lines.insert(1, "|---" + "|---:" * len(cols) + "|")
    return "\n".join(lines)


def step_cell(row):
    """The study's measure in a row of the history, with its images if fewer than 128."""
    if "step_acc" not in row:
        return "not recorded"
    if row["step_images"] < STUDY_TRAIN_IMAGES:
        return f"{row['step_acc']:.2f} ({row['step_images']} images)"
    return f"{row['step_acc']:.2f}"


# --- Where a run starts, and the checkpoint: written atomically, read safely -----------------

def starting_point(argv):
    """Where the run starts, decided once: (its settings, the checkpoint it continues, its
    network). A new run takes the flags and starts from nothing; --resume takes the checkpoint's
    settings, of which only --iters, --lr-drops (what is still ahead) and --data may change."""
    args = get_args(argv)
    path = Path(args.ckpt)
    if not args.resume:
        if path.exists():
            raise ValueError(f"{path} exists: continue it with `{command(path)}`, or pick "
                             f"another --ckpt")
        if not path.parent.is_dir():
            raise ValueError(f"--ckpt {path}: the folder {path.parent} does not exist")
        torch.manual_seed(args.seed)
        fresh = {"iteration": 0, "history": [], "momentum": [], "loader": None}
        return args, fresh, ResNet(args.depth, width=args.width, plain=args.plain)
    ckpt, model = load(path)
    if "momentum" not in ckpt:
        raise ValueError(f"{path} holds a network's weights, not a run to resume")
    run, done = ckpt["args"], ckpt["iteration"]
    args = get_args(argv, run)  # the run's settings as the defaults: a difference was typed
    for k in SETTINGS:
        flag = "--" + k.replace("_", "-")
        if k not in RESUME_MAY_CHANGE and getattr(args, k) != run[k]:
            raise ValueError(f"{path} was trained with {flag} {run[k]}, and a resume continues "
                             f"that run: leave {flag} out, or start a new --ckpt")
    if args.iters <= done:
        raise ValueError(f"{path} has run {done:,} of its {run['iters']:,} iterations: to "
                         f"train it further, give --iters above {done}")
    old, new = schedule(run["iters"], run["lr_drops"]), schedule(args.iters, args.lr_drops)
    if min(set(old) ^ set(new), default=done) < done:
        raise ValueError(f"{path} ran {done:,} iterations with the rate divided at "
                         f"{old or 'no iteration'}: --lr-drops may change only what is ahead")
    return args, ckpt, model


def checkpoint(model, bufs, loader, it, history, recent, run, seconds):
    """All that a resume needs to go on exactly, and what ran: the device, torch, the training
    time, and a hash of the code that trained."""
    device = bufs[0].device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    code = hashlib.sha256(b"".join(Path(__file__).with_name(f).read_bytes()
                                   for f in ("resnet18.py", "cifar.py", "train.py")))
    return {"model": model.state_dict(), "momentum": bufs, "loader": loader.state_dict(),
            "iteration": it, "history": history, "recent": recent, **run,
            "provenance": {"device": f"{device} ({name})", "torch": str(torch.__version__),
                           "seconds": seconds, "source": code.hexdigest()[:12]}}


def save(path, state):
    """Write `state` to a temporary file beside `path`, flush it to disk, rename it over `path`:
    a failed save leaves the previous file whole. Never a state that is not finite."""
    if not all(t.isfinite().all() for t in [*state["model"].values(), *state["momentum"]]):
        kept = "no checkpoint was written"
        if path.exists():
            kept = f"{path} still holds iteration {load(path)[0]['iteration']:,}"
        raise FloatingPointError(f"the weights became NaN or infinite by iteration "
                                 f"{state['iteration']:,}: training diverged; {kept}")
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save turns a full disk into a RuntimeError
        tmp.unlink(missing_ok=True)
        why = str(e.__cause__ or e).splitlines()[0]
        raise OSError(f"could not write {path} ({why}); the previous file, if any, is whole") \
            from None


def load(path):
    """(checkpoint, its network on the CPU in eval mode). torch.load(weights_only=True) runs no
    code from the file; load_state_dict(strict=True) checks every weight's name and shape
    against the network the file's settings name (built on the meta device: no memory)."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such checkpoint: train one with `python train.py "
                                f"--ckpt {path}`, or name another with --ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        run = ckpt["args"]
        with torch.device("meta"):
            model = ResNet(run.get("depth", 18), width=run["width"], plain=run.get("plain", False))
        model.load_state_dict(ckpt["model"], assign=True)
    except (pickle.UnpicklingError, EOFError):  # not torch.save's, or code: refused unread
        raise ValueError(f"{path}: not a checkpoint of train.py (torch.load with weights_only "
                         f"refused it: another kind of file, or objects that run code)") from None
    except (RuntimeError, OSError, KeyError, TypeError) as e:  # truncated, another network, dict
        why = " ".join(str(e).split())[:200]
        raise ValueError(f"{path}: not a checkpoint of train.py ({why})") from None
    return ckpt, model.eval()


def command(path):
    """The command that continues the run in `path`."""
    return shlex.join(["python", sys.argv[0], "--resume", "--ckpt", str(path)])


def deterministic_cuda(device):
    """On CUDA: cuDNN's deterministic convolutions, no autotuning, so that a resumed run is
    bit-exact, and float32 as float32 (no TF32; --amp is the fast path). The CPU is already."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def compiled(model, device):
    """torch.compile: on CUDA with CUDA graphs (mode reduce-overhead: one launch per step)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, ArithmeticError) as e:  # bad input, a full disk, divergence
        sys.exit(f"error: {e}")

"""Train ResNet-18 on CIFAR-10 as the study did (Fenglin Liu, "Investigating ResNet on the
Perspective of Experimental Results and Analysis", §2), and print its Table 1.

    python train.py --iters 50000 --batch 32                  # the study's run: a GPU job
    python train.py --iters 2000 --width 16 --lr-drops 1280 --eval-every 200 --ckpt quick.pt
    python train.py --resume --ckpt quick.pt                  # continue it where it stopped

The study: SGD with momentum 0.9 and weight decay 0.0002, batch 32, learning rate 0.1 divided
by 10 at iteration 32,000, 50,000 iterations (He et al. 2016 §4.2 divide again at 48,000:
`--lr-drops 32000 48000`). In that order: the flags, `lr_at`, the SGD update by hand, a step,
evaluation, the loop, Table 1; then the checkpoint: an atomic save, a safe load, a resume.
Ctrl-C stops the loop between two steps, saves, and prints the command that continues it.
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
AHEAD = {"iters", "lr_drops", "data"}  # what a resume may change (data: the same images)


def get_args(argv=None):
    """(settings, the names of the settings typed on the command line): the study's defaults."""
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
    r.add_argument("--data", default="./data", help="CIFAR-10 folder, downloaded there if it "
                   "holds none (default ./data)")
    r.add_argument("--no-download", action="store_true", help="fail instead of downloading")
    r.add_argument("--seed", type=at_least(0), default=0, help="seed of weights and batches "
                   "(default 0)")
    r.add_argument("--eval-every", type=at_least(0), default=1000, help="iterations between "
                   "evaluations and checkpoints; 0: only at the end (default 1000)")
    r.add_argument("--ckpt", default="run.pt", help="checkpoint to write (default run.pt)")
    r.add_argument("--resume", action="store_true", help="continue the run in --ckpt")
    r.add_argument("--device", type=parse_device, default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: the GPU if there is one)")
    r.add_argument("--amp", action="store_true",
                   help="bfloat16 autocast (default off: float32). Faster on GPUs and on CPUs "
                        "with bfloat16 units (AMX or AVX-512 BF16: grep bf16 /proc/cpuinfo); "
                        "slower on other CPUs")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the model (on CUDA: mode reduce-overhead, CUDA graphs)")
    # Settings start unset, so that argparse fills in a default only where no flag was given.
    args = p.parse_args(argv, argparse.Namespace(**dict.fromkeys(SETTINGS)))
    given = {k for k in SETTINGS if getattr(args, k) is not None}
    for k in set(SETTINGS) - given:
        setattr(args, k, p.get_default(k))
    if not (args.lr > 0 and 0 <= args.momentum < 1 and args.wd >= 0):
        p.error(f"--lr {args.lr} must be above 0, --momentum {args.momentum} from 0 to below 1, "
                f"--wd {args.wd} at least 0")
    return args, given


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
    Each line below does that for all parameters at once (one multi-tensor kernel per line).
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
    args, given = get_args(argv)
    path, ckpt = Path(args.ckpt), None
    if args.resume:
        ckpt, model = load(path)
        resume(args, given, ckpt, path)
    elif path.exists():
        raise ValueError(f"{path} exists: continue it with `{command(path)}`, or pick another "
                         f"--ckpt")
    elif not path.parent.is_dir():
        raise ValueError(f"--ckpt {path}: the folder {path.parent} does not exist")
    args.data = os.path.abspath(args.data)  # so that visualize.py finds it from anywhere
    exact(args.device)
    print(f"reading CIFAR-10 from {args.data}", flush=True)
    train_x, train_y, test_x, test_y = cifar.load_or_download(args.data, not args.no_download)
    data = {"data_fingerprint": f"{len(train_y)} train / {len(test_y)} test images, sha256 "
                                f"{cifar.fingerprint(train_x, train_y, test_x, test_y)}",
            "test_fingerprint": cifar.fingerprint(test_x, test_y)}
    if ckpt and ckpt["data_fingerprint"] != data["data_fingerprint"]:
        raise ValueError(f"{path} was trained on other data ({ckpt['data_fingerprint']}) than "
                         f"--data {args.data} ({data['data_fingerprint']})")
    loader = cifar.Loader(train_x, train_y, args.batch, args.device, seed=args.seed)
    test = torch.as_tensor(test_x).to(args.device), torch.as_tensor(test_y).to(args.device)
    if ckpt:
        loader.load_state_dict(ckpt["loader"])
        model.train()  # load() gives it in eval mode
    else:
        torch.manual_seed(args.seed)
        model = ResNet(args.depth, width=args.width, plain=args.plain)
    model.to(args.device, memory_format=torch.channels_last)  # the fast layout for convolutions
    bufs = [torch.zeros_like(p) for p in model.parameters()]  # momentum: zero at the start
    for b, saved in zip(bufs, ckpt["momentum"] if ckpt else []):
        b.copy_(saved)
    return loop(args, path, model, bufs, loader, test, data, ckpt)


def loop(args, path, model, bufs, loader, test, data, ckpt):
    """The training loop: a step per iteration, a log line every LOG_EVERY, an evaluation and a
    checkpoint every --eval-every and at the end. Ctrl-C or SIGTERM stop it between two steps."""
    params, drops = list(model.parameters()), schedule(args.iters, args.lr_drops)
    step_model = compiled(model, args.device) if args.compile else model
    # recent: whether each of the last STUDY_TRAIN_IMAGES training images since the last
    # evaluation was classified right by its step (a run saved before it was kept: none)
    start, history, recent = 0, [], torch.zeros(0, dtype=torch.bool, device=args.device)
    if ckpt:
        start, history, recent = ckpt["iteration"], ckpt["history"], ckpt.get("recent", recent)
    recent = recent.to(args.device)
    saved_at = ckpt["iteration"] if ckpt else None  # the iteration the file holds
    before = ckpt.get("provenance", {}).get("seconds", 0.0) if ckpt else 0.0
    print(f"{model.name}: {sum(p.numel() for p in params):,} parameters on {args.device}; "
          f"data: {data['data_fingerprint']}; iterations {start:,} -> {args.iters:,}; learning "
          f"rate {args.lr:g}, divided by 10 at: {', '.join(f'{d:,}' for d in drops) or 'none'}",
          flush=True)
    it, n_sum, t0 = start, 0, time.time()
    loss_sum, correct_sum = torch.zeros((), device=args.device), torch.zeros((), device=args.device)
    t_log, stopped = t0, []

    def state():
        return {"model": model.state_dict(), "momentum": bufs, "loader": loader.state_dict(),
                "iteration": it, "history": history, "recent": recent, **data,
                "args": {k: getattr(args, k) for k in SETTINGS},
                "provenance": provenance(args.device, before + time.time() - t0)}

    handlers = {s: signal.signal(s, lambda signum, frame: stopped.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while it < args.iters and not stopped:
            lr = lr_at(it, args.lr, drops)
            x, y = next(loader)
            step = train_step(step_model, params, bufs, x, y, lr, args.momentum, args.wd,
                              args.amp)
            loss_sum += step["loss"]
            correct_sum += step["correct"].sum()
            recent = torch.cat([recent, step["correct"]])[-STUDY_TRAIN_IMAGES:]
            n_sum, it = n_sum + 1, it + 1  # `it`: iterations done
            if it % LOG_EVERY == 0 or it == start + 10:
                now = time.time()
                left = (now - t0) / (it - start) * (args.iters - it)  # s, at the pace so far
                h, m = divmod(round(left / 60), 60)
                print(f"it {it:6d}/{args.iters} | loss {loss_sum.item() / n_sum:.4f} | acc "
                      f"{100 * correct_sum.item() / (n_sum * args.batch):5.2f}% | lr {lr:.4g} | "
                      f"{n_sum * args.batch / (now - t_log):5.0f} img/s | left {h} h {m:02d} min",
                      flush=True)
                loss_sum, correct_sum = loss_sum.zero_(), correct_sum.zero_()
                n_sum, t_log = 0, time.time()
            if (args.eval_every and it % args.eval_every == 0) or it == args.iters:
                history.append(evaluation(model, loader, test, it, lr, recent, args))
                recent = recent[:0]  # the next row's images: those after this evaluation
                saved_at = save(path, state(), saved_at)
                t_log = time.time()
        if stopped:
            save(path, state(), saved_at)
            print(f"{signal.Signals(stopped[0]).name}: stopped at iteration {it:,}; {path} "
                  f"saved; continue with: {command(path)}", file=sys.stderr)
            return 128 + stopped[0]
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    print(f"Table 1 of this run, beside the study's:\n{table(history)}")
    return 0


def evaluation(model, loader, test, it, lr, recent, args):
    """A row of the history, printed: train (all at a Table 1 column) and test loss, accuracy,
    and the study's measure, the accuracy of the steps on the `recent` training images."""
    full = it % TABLE_EVERY == 0 or it == args.iters
    n = len(loader.labels) if full else min(TRAIN_SUBSET, len(loader.labels))
    train_loss, train_acc = evaluate(model, loader.images[:n], loader.labels[:n], args.amp)
    test_loss, test_acc = evaluate(model, *test, args.amp)
    step_acc = 100.0 * recent.float().mean().item()
    print(f"eval {it:6d} | train loss {train_loss:.4f} acc {train_acc:.2f}% ({n} images) | "
          f"as trained, last {len(recent)}: {step_acc:.2f}% | test loss "
          f"{test_loss:.4f} acc {test_acc:.2f}%", flush=True)
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
    train = f"{seen.pop():,} images" if len(seen) == 1 else "images"
    rows = [("Iterations", [f"{h['iteration']:,}" for h in cols]),
            (f"Train error (%), {train}, no augmentation",
             [f"{100 - h['train_acc']:.2f}" for h in cols]),
            (f"Train accuracy (%), {train}, no augmentation",
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


# --- The checkpoint: written atomically, read safely, resumed exactly -------------------------

def save(path, state, saved_at):
    """Write `state` to a temporary file beside `path`, flush it to disk, rename it over `path`:
    a failed save leaves the previous file whole. Never a state that is not finite."""
    if not all(t.isfinite().all() for t in [*state["model"].values(), *state["momentum"]]):
        kept = "no checkpoint was written" if saved_at is None else \
            f"{path} still holds iteration {saved_at:,}"
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
    return state["iteration"]


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


def resume(args, given, ckpt, path):
    """Give `args` the checkpoint's settings, but for --iters, --lr-drops and --data (the same
    images, elsewhere); refuse, naming the flag, a change of what the run has done."""
    saved, done = ckpt["args"], ckpt["iteration"]
    if "momentum" not in ckpt:
        raise ValueError(f"{path} holds a network's weights, not a run to resume")
    for k in given - AHEAD:
        if getattr(args, k) != saved[k]:
            flag = "--" + k.replace("_", "-")
            raise ValueError(f"{path} was trained with {flag} {saved[k]}, and a resume "
                             f"continues that run: leave {flag} out, or start a new --ckpt")
    for k in set(SETTINGS) - given:
        setattr(args, k, saved[k])
    if args.iters <= done:
        raise ValueError(f"{path} has run {done:,} of its {saved['iters']:,} iterations: to "
                         f"train it further, give --iters above {done}")
    old, new = schedule(saved["iters"], saved["lr_drops"]), schedule(args.iters, args.lr_drops)
    if min(set(old) ^ set(new), default=done) < done:
        raise ValueError(f"{path} ran {done:,} iterations with the rate divided at "
                         f"{old or 'no iteration'}: --lr-drops may change only what is ahead")


def command(path):
    """The command that continues the run in `path`."""
    return shlex.join(["python", sys.argv[0], "--resume", "--ckpt", str(path)])


def exact(device):
    """On CUDA: cuDNN's deterministic convolutions, no autotuning, so that a resumed run is
    bit-exact, and float32 as float32 (no TF32; --amp is the fast path). The CPU is already."""
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


def compiled(model, device):
    """torch.compile: on CUDA with CUDA graphs (mode reduce-overhead: one launch per step)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def provenance(device, seconds):
    """What ran: the device, torch, the training time, and a hash of the code that trained."""
    code = hashlib.sha256(b"".join(Path(__file__).with_name(f).read_bytes()
                                   for f in ("resnet18.py", "cifar.py", "train.py")))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {"device": f"{device} ({name})", "torch": str(torch.__version__), "seconds": seconds,
            "source": code.hexdigest()[:12]}




if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError, ArithmeticError) as e:  # bad input, a full disk, divergence
        sys.exit(f"error: {e}")

"""What keeps a run safe, behind one door: `Run` (the lock, the stops, atomic saves) and `load`.

    with checkpoint.Run(args.ckpt, args.resume) as run:   # the lock; run.last: what to resume
        run.begin(first_line)          # from here Ctrl-C, SIGTERM, SIGHUP wait for a step's end
        while it < iters and not run.stopped: ... run.say(line) ... run.save(state)
        if run.stopped: return run.stop(state)       # saves, prints the command that continues

One run per checkpoint (an flock on NAME.pt.lock). A fresh run writes NAME.pt and NAME.csv only
where no file is. A save is atomic (a fresh file, fsync, os.replace), never of a state that is
not finite, and a failed one leaves the previous file whole. `load` reads with
weights_only=True (no code in a file runs) and checks with what already checks: each setting
by the parser of its flag (SETTINGS), the weights by load_state_dict(strict=True) on the
network the settings name. A checkpoint: model, iteration, history (HISTORY_KEYS), args,
data_fingerprint, test_fingerprint, provenance; to resume, momentum and loader.
"""
import csv
import fcntl
import io
import math
import os
import re
import secrets
import shlex
import signal
import sys
from pathlib import Path

import torch

from resnet18 import ResNet
from study import check_settings

HISTORY_KEYS = ("iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                "train_images")
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
LOCK_TAG = b"lock of train.py, process "


# --- The run ----------------------------------------------------------------------------------

class Run:
    """One training run on disk: see the module's docstring."""

    def __init__(self, ckpt, resume=False):
        self.path, self.resume = Path(ckpt), resume
        self.csv, self.lock = self.path.with_suffix(".csv"), Path(f"{ckpt}.lock")
        self.last, self.saved_at, self.stopped, self.handlers = None, None, None, {}

    def __enter__(self):
        p = self.path
        if p.suffix != ".pt":
            raise ValueError(f"--ckpt {p}: give a file name ending in .pt (the run writes its "
                             f"history beside it as {p.stem}.csv)")
        if p.is_dir() or self.csv.is_dir():
            raise ValueError(f"--ckpt {p}: {p if p.is_dir() else self.csv} is a folder")
        if not p.parent.is_dir():
            raise ValueError(f"--ckpt {p}: the folder {p.parent} does not exist")
        if not self.resume and p.exists():
            raise ValueError(f"{p} exists: continue it with `{self.command()}`, or pick "
                             f"another --ckpt")
        if not self.resume and self.csv.exists():
            raise ValueError(f"--ckpt {p}: {self.csv} exists, and the run would write its "
                             f"history there: move it, or pick another --ckpt")
        if self.resume and self.csv.exists() and \
                not self.csv.read_bytes().startswith(b"iteration,lr,"):
            raise ValueError(f"{self.csv} is not the history of {p}: move it, then resume")
        self.fd = take_lock(self.lock)
        try:
            if self.resume:
                self.last = load(p, resume=True)[0]
                self.saved_at = self.last["iteration"]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.lock.unlink(missing_ok=True)  # ours: it holds LOCK_TAG, and we hold its lock
        os.close(self.fd)

    def begin(self, line):  # a signal ignored at the start (SIGHUP under nohup) stays ignored
        for sig in STOPS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self.handlers[sig] = signal.signal(sig, self.on_signal)
        self.say(line)

    def on_signal(self, signum, frame):
        self.stopped = self.stopped or (signal.Signals(signum).name, 128 + signum)

    def say(self, line):
        """print; if stdout fails (a closed pipe, a full disk), stop as for a signal."""
        try:
            print(line, flush=True)
        except OSError as e:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # later lines: nowhere
            self.stopped = self.stopped or (("SIGPIPE", 128 + signal.SIGPIPE)
                                            if isinstance(e, BrokenPipeError) else
                                            (f"error: stdout failed ({e.strerror})", 1))

    def save(self, state):
        tensors = [*state["model"].values(), *state["momentum"]]
        if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            raise FloatingPointError(f"the weights became NaN or infinite by iteration "
                                     f"{state['iteration']:,}: training diverged; {self.kept()}")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=HISTORY_KEYS)
        writer.writeheader()
        writer.writerows(state["history"])
        write_atomic(self.path, lambda f: torch.save(state, f))
        write_atomic(self.csv, lambda f: f.write(text.getvalue().encode()))
        self.saved_at = state["iteration"]

    def kept(self):
        return "no checkpoint was written" if self.saved_at is None else \
            f"{self.path} still holds iteration {self.saved_at:,}"

    def stop(self, state):
        """Save (unless nothing is new), say how to continue; the exit status."""
        if state["iteration"] != (self.saved_at or 0):
            self.save(state)
        done = f"{self.path} saved; continue with: {self.command()}" \
            if self.saved_at is not None else "no checkpoint was written"
        why, status = self.stopped
        print(f"{why}: stopped at iteration {state['iteration']:,}; {done}", file=sys.stderr,
              flush=True)
        return status

    def command(self):  # the one that continues the run
        script = sys.argv[0] if sys.argv[0].endswith("train.py") else "train.py"
        return f"python {shlex.quote(script)} --resume --ckpt {shlex.quote(str(self.path))}"


def take_lock(path):
    """An exclusive flock on `path`, created here or left by a killed run (LOCK_TAG); its fd."""
    flags = os.O_RDWR | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            fd = os.open(path, flags)
            if not os.read(fd, 64).startswith(LOCK_TAG):
                os.close(fd)
                raise ValueError(f"{path} exists and is not a lock of train.py; it was left "
                                 f"alone: pick another --ckpt") from None
    except OSError as e:
        raise OSError(f"--ckpt {str(path)[:-5]}: cannot open the lock file {path} "
                      f"({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
            raise BlockingIOError  # its owner removed it as we locked it
    except (BlockingIOError, FileNotFoundError):
        owner = os.pread(fd, 64, 0).removeprefix(LOCK_TAG).decode(errors="replace").strip()
        os.close(fd)
        raise OSError(f"{str(path)[:-5]} is in use by a running train.py (process "
                      f"{owner or '?'}); wait for it to finish, or pick another --ckpt") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, LOCK_TAG + f"{os.getpid()}\n".encode(), 0)
    return fd


def write_atomic(path, write):
    """write(file) into a fresh temporary file beside `path` (mode "x": never one planted
    there; the umask's permissions), flush it to disk, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # OSError, or torch.save's RuntimeError on a full disk
        tmp.unlink(missing_ok=True)
        cause = next((c for c in (e, e.__cause__) if isinstance(c, OSError) and c.strerror), e)
        reason = getattr(cause, "strerror", None) or str(e).splitlines()[0]
        raise OSError(f"could not write {path} ({reason}); the previous file, if any, is "
                      f"intact") from None


# --- Reading -----------------------------------------------------------------------------------

def load(path, resume=False):
    """(checkpoint, its network with the weights, on the CPU), checked as the module's docstring
    says; `resume=True` also checks what a resumed run reads (momentum, loader)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file" if not path.exists() else
                                f"{path}: a folder, a pipe or a device, not a checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        why = f"refused: it holds Python objects ({str(e).split('GLOBAL ')[1].split()[0]}), " \
            "and loading them could run code" if "GLOBAL " in str(e) else \
            "the checkpoint is truncated or corrupt" \
            if path.read_bytes()[:4] == b"PK\x03\x04" else \
            "not a checkpoint (train.py writes torch.save files; this is another kind)"
        raise ValueError(f"{path}: {why}") from None
    try:
        if not isinstance(ckpt, dict):
            raise TypeError(f"it holds a {type(ckpt).__name__}, not a dict")
        if "data" in ckpt:
            ckpt["data_fingerprint"] = ckpt.pop("data")  # its name in older checkpoints
        args = ckpt["args"] = {"depth": 18, "plain": False, "eval_every": 1000, **ckpt["args"]}
        check_settings(args)
        with torch.device("meta"):  # no memory: the tensors come from the file
            model = ResNet(args["depth"], width=args["width"], plain=args["plain"])
        model.load_state_dict(ckpt["model"], assign=True)  # every key, shape and kind
        check_run(ckpt, model, resume)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = f"it lacks {e}" if isinstance(e, KeyError) else lines[min(1, len(lines) - 1)]
        why = re.sub(r", whose dimensions in the model .* occurred : \('(.*)',\)", r": \1", why)
        raise ValueError(f"{path}: not a valid checkpoint of train.py: {why}"[:300]) from None
    return ckpt, model.eval()


def check_run(ckpt, model, resume):
    it, rows = ckpt["iteration"], ckpt["history"]
    if type(it) is not int or not 0 <= it <= ckpt["args"]["iters"]:
        raise ValueError(f"iteration is {it!r}, not an integer from 0 to --iters")
    last = 0
    for i, row in enumerate(rows):
        if not set(HISTORY_KEYS[:-1]) <= set(row) or not all(
                type(v) in (int, float) and math.isfinite(v) for v in row.values()):
            raise ValueError(f"history row {i} lacks a key or holds a value that is not a "
                             f"finite number")
        if type(row["iteration"]) is not int or not last < row["iteration"] <= it:
            raise ValueError(f"history: iterations must increase up to {it}")
        last = row["iteration"]
    tensors = list(model.state_dict().values())
    if resume:
        if "momentum" not in ckpt:
            raise ValueError("it holds the weights of a run, not the state to resume it (no "
                             "momentum, no batch order): it can be drawn, not resumed")
        momentum, order, pos = ckpt["momentum"], ckpt["loader"]["order"], ckpt["loader"]["pos"]
        if [m.shape for m in momentum] != [p.shape for p in model.parameters()]:
            raise ValueError("momentum does not fit the network's parameters")
        tensors += momentum
        if ckpt["loader"]["generator"].dtype != torch.uint8 or order is not None and \
                not torch.equal(order.sort().values, torch.arange(len(order))):
            raise ValueError("loader is not a generator state and a permutation of the split")
        if type(pos) is not int or not 0 <= pos <= (0 if order is None else len(order)):
            raise ValueError(f"loader.pos is {pos!r}, not a position inside the epoch")
        str.upper(ckpt["data_fingerprint"])  # a TypeError unless it is a string
    if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
        raise ValueError("a weight holds NaN or infinity")


# --- Bad input at the door: one line ------------------------------------------------------------

def pick_device(name):
    """torch.device for --device: auto (CUDA when available), cpu, cuda or cuda:N."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or index and (kind == "cpu" or not index.isdigit()):
        raise ValueError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)")
    if kind == "cuda" and int(index or 0) >= (n := torch.cuda.device_count()):
        raise ValueError(f"--device {name}: " + (f"this machine has {n} GPUs" if n else
                                                 "CUDA is not available on this machine"))
    return torch.device(name)


def cli(main, argv=None):
    """A script's main(argv) as a command: an expected failure is one line (for sys.exit)."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return "error: interrupted; nothing partial was written"
    except (OSError, ValueError, FloatingPointError) as e:
        return f"error: {e}"

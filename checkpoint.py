"""What keeps a run safe, behind one door: `Run`. train.py uses it in a few words:

    with checkpoint.Run(args, given) as run:   # the lock; a resume's checkpoint and settings
        run.begin(first_line)                  # from here a stop waits for the end of a step
        while it < iters and not run.stopped:
            ...  run.say(line)  ...  run.save(state)
        if run.stopped:                        # Ctrl-C, SIGTERM, SIGHUP, or stdout failed
            return run.stop(state)             # saves, prints the command that continues

The guarantees:
- one run per checkpoint: an exclusive lock on NAME.pt.lock, a file that only train.py writes;
- no file of the user's is touched: --ckpt ends in .pt, a fresh run writes NAME.pt and
  NAME.csv only where no file is, and a resume rewrites only the run's own files;
- every save is atomic: a fresh temporary file beside the target, flushed to disk, then
  renamed over it; a failed save removes its temporary file and leaves the old file whole;
- a state that is not finite is never saved over a good one;
- `load` reads with torch.load(weights_only=True), so no code in a file can run, and
  `validate` checks every field before anything uses it.

A checkpoint is a dict of plain data and tensors: model (the state_dict), iteration,
history (one row per evaluation: HISTORY_KEYS), args (train.py's settings), data_fingerprint
(train and test images) and test_fingerprint, and, to resume, momentum (the SGD buffers in the
order of model.parameters()) and loader (the batch order).
"""
import argparse
import csv
import fcntl
import hashlib
import io
import math
import os
import re
import secrets
import shlex
import signal
import sys
import warnings
from pathlib import Path

import torch

import study
from resnet18 import BLOCKS, ResNet, describe, network_name

HISTORY_KEYS = ("iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                "train_images")
KEPT = ("depth", "plain", "width", "batch", "lr", "momentum", "wd", "seed", "amp")  # the past
RESUMED = KEPT + ("iters", "lr_drops", "eval_every", "data")  # a resume's defaults
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
LOCK_TAG = b"lock of train.py, process "


class Run:
    """One training run on disk (args.ckpt): see the module's docstring."""

    def __init__(self, args, given=()):
        self.args, self.given = args, dict(given)
        self.path = Path(args.ckpt)
        self.csv = self.path.with_suffix(".csv")
        self.lock = Path(f"{self.path}.lock")
        self.last, self.saved_at, self.stopped, self.handlers = None, None, None, {}
        self.changes = ""  # what a resume changes, in words

    def __enter__(self):
        self.check_place()
        self.fd = take_lock(self.lock)
        try:
            if self.args.resume:
                self.last, saved = load_valid(self.path, resume=True)
                self.saved_at = self.last["iteration"]
                self.args = self.continued(saved)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.lock.unlink(missing_ok=True)  # ours: it holds LOCK_TAG, and we hold its lock
        os.close(self.fd)

    def check_place(self):
        """Refuse, before any work, a checkpoint that could not be saved or would overwrite."""
        p, csv_, fresh = self.path, self.csv, not self.args.resume
        if p.is_dir():
            raise ValueError(f"--ckpt {p} is a folder: give a file name, such as {p / 'run.pt'}")
        if p.suffix != ".pt":
            raise ValueError(f"--ckpt {p}: a checkpoint's name ends in .pt (the run writes its "
                             f"history beside it as {p.stem}.csv)")
        if csv_.is_dir():
            raise ValueError(f"--ckpt {p}: its history file {csv_} is a folder")
        if not p.parent.is_dir():
            raise ValueError(f"--ckpt {p}: the folder {p.parent} does not exist")
        if fresh and p.exists():
            saved = load_valid(p)[1]
            differs = [f"{flag(k)} {saved[k]}" for k in KEPT if saved[k] != vars(self.args)[k]]
            if differs:
                raise ValueError(f"{p} exists and is another run (it was trained with "
                                 f"{', '.join(differs)}): pick another --ckpt")
            raise ValueError(f"{p} exists: continue it with `{self.command()}`, or pick "
                             f"another --ckpt")
        if fresh and csv_.exists():
            raise ValueError(f"--ckpt {p}: {csv_} exists, and the run would write its history "
                             f"there: move it, or pick another --ckpt")
        if not fresh and not p.exists():
            raise FileNotFoundError(f"{p}: no such checkpoint file to --resume")
        if not fresh and csv_.exists() and not csv_.read_bytes().startswith(b"iteration,lr,"):
            raise ValueError(f"{csv_} is not the history of {p}: move it, then resume")

    def continued(self, saved):
        """The resumed run's settings: each flag given, else the checkpoint's. A flag that
        would change the iterations already run is refused; one that changes what is still
        ahead is taken, and said in `self.changes`."""
        done, given = self.last["iteration"], self.given
        for k in KEPT:
            if k in given and given[k] != saved[k]:
                raise ValueError(f"{self.path} was trained with {flag(k)} {saved[k]}; "
                                 f"{flag(k)} {given[k]} would change its {done:,} iterations "
                                 f"run: leave it out to continue the run")
        args = argparse.Namespace(**{**vars(self.args), **{k: saved[k] for k in RESUMED}, **given})
        if "lr_drops" not in given:  # the study's first part goes on with the study's drop
            studys = saved["lr_drops"] == study.drops(saved["iters"])
            args.lr_drops = study.drops(args.iters) if studys else saved["lr_drops"]
        if args.iters < done:
            raise ValueError(f"{self.path} is at iteration {done:,}, past --iters {args.iters}")
        check_drops(args.lr_drops, args.iters)
        changed = sorted(set(saved["lr_drops"]) ^ set(args.lr_drops))
        if changed and changed[0] < done:
            raise ValueError(f"{self.path} was trained with --lr-drops "
                             f"{' '.join(map(str, saved['lr_drops'])) or '(none)'}, a different "
                             f"schedule before iteration {done:,}: leave --lr-drops out")
        notes = []
        if args.iters != saved["iters"]:
            notes.append(f"{'extending' if args.iters > saved['iters'] else 'shortening'} to "
                         f"{args.iters:,} iterations (it was set to {saved['iters']:,})")
        if changed:
            ahead = [f"{d:,}" for d in args.lr_drops if d >= done]
            notes.append(f"the learning rate will drop at {', '.join(ahead)}" if ahead else
                         "the learning rate will not drop again")
        if args.eval_every != saved["eval_every"]:
            notes.append(f"evaluating every {args.eval_every} iterations (was "
                         f"{saved['eval_every']})")
        self.changes = "; ".join(notes) or "with the run's own settings"
        return args

    def check_data(self, fingerprint):
        if self.last and self.last["data_fingerprint"] != fingerprint:
            raise ValueError(f"{self.path} was trained on other data "
                             f"({self.last['data_fingerprint']}) than --data {self.args.data} "
                             f"({fingerprint})")

    def begin(self, line):
        """From here Ctrl-C, SIGTERM and SIGHUP set `stopped`, and the loop saves and stops
        between two steps. A signal ignored at the start (SIGHUP under nohup) stays ignored."""
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
        """The checkpoint, then its history as .csv beside it; never a state that is not
        finite."""
        tensors = [*state["model"].values(), *state.get("momentum", [])]
        if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            raise FloatingPointError(f"the weights became NaN or infinite by iteration "
                                     f"{state['iteration']:,}: training diverged; {self.kept()}")
        write_atomic(self.path, lambda f: torch.save(state, f))
        write_atomic(self.csv, lambda f: f.write(history_csv(state["history"])))
        self.saved_at = state["iteration"]

    def kept(self):
        return "no checkpoint was written" if self.saved_at is None else \
            f"{self.path} still holds iteration {self.saved_at:,}"

    def stop(self, state):
        """After a stop: save (unless nothing is new), say how to continue; the exit status."""
        it = state["iteration"]
        if it != (self.saved_at or 0):
            self.save(state)
        done = f"{self.path} saved; continue with: {self.command()}" if self.saved_at is not None \
            else "no checkpoint was written"
        why, status = self.stopped
        print(f"{why}: stopped at iteration {it:,}; {done}", file=sys.stderr, flush=True)
        return status

    def command(self):
        script = sys.argv[0] if sys.argv[0].endswith("train.py") else "train.py"
        return f"python {shlex.quote(script)} --resume --ckpt {shlex.quote(str(self.path))}"


def flag(key):
    return "--" + key.replace("_", "-")


def check_drops(drops, iters):
    if len(set(drops)) < len(drops):
        raise ValueError(f"--lr-drops {' '.join(map(str, drops))}: an iteration given twice")
    if any(d >= iters for d in drops):
        raise ValueError(f"--lr-drops {' '.join(map(str, drops))} must all be below --iters "
                         f"{iters}; give drops inside the run, or --lr-drops with no value for "
                         f"a constant rate")
    if len(drops) > 30:
        raise ValueError(f"--lr-drops: {len(drops)} drops would divide the rate by 10**"
                         f"{len(drops)}; give at most 30")


def take_lock(path):
    """An exclusive flock on `path`, a file this function created or wrote before (LOCK_TAG);
    its file descriptor. A run killed before its end leaves the file; the next run reuses it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except FileExistsError:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:
            raise OSError(f"{path}: cannot open the lock file ({e.strerror})") from None
        if not os.read(fd, 64).startswith(LOCK_TAG):
            os.close(fd)
            raise ValueError(f"{path} exists and is not a lock of train.py; it was left alone: "
                             f"pick another --ckpt")
    except OSError as e:
        raise OSError(f"--ckpt {str(path)[:-5]}: cannot write in {path.parent} "
                      f"({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path, follow_symlinks=False).st_ino:
            raise BlockingIOError  # its owner deleted it as we locked it
    except (BlockingIOError, FileNotFoundError):
        os.lseek(fd, 0, os.SEEK_SET)
        owner = os.read(fd, 64).removeprefix(LOCK_TAG).decode(errors="replace").strip()
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
    created = False
    try:
        with open(tmp, "xb") as f:
            created = True
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # OSError, or torch.save's RuntimeError on a full disk
        if created:
            tmp.unlink(missing_ok=True)
        cause = next((c for c in (e, e.__cause__, e.__context__)
                      if isinstance(c, OSError) and c.strerror), None)
        reason = cause.strerror if cause else str(e).splitlines()[0]
        raise OSError(f"could not write {path} ({reason}); the previous file, if any, is "
                      f"intact") from None


def history_csv(history):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_KEYS)
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


def fingerprint(*arrays):
    """A short hash of the data, so that a resume or a figure can tell other images."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --- Bad input: one line naming the flag or the file -----------------------------------------

def pick_device(name):
    """torch.device for --device: auto (CUDA when available), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} GPUs")
    return torch.device(name)


def check_fits_in_memory(depth, width, plain, device):
    """A clear error, before any allocation, for a network too large for `device`."""
    with torch.device("meta"):
        n = sum(p.numel() for p in ResNet(depth, width=width, plain=plain).parameters())
    need = 3 * 4 * n  # float32 weights, gradients and momentum, before any activation
    if device.type == "cuda":
        have, where = torch.cuda.get_device_properties(device).total_memory, "the GPU's"
    else:
        have, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine's"
    if need > have:
        raise ValueError(f"--width {width}: {network_name(depth, plain)} would have {n:,} "
                         f"parameters, {need / 2**30:.1f} GiB for its weights, gradients and "
                         f"momentum alone, more than {where} {have / 2**30:.1f} GiB")


def cli(main, argv=None):
    """Run a script's main(argv) as a command: an expected failure is one line on stderr (a
    returned string, for sys.exit), and Ctrl-C before any save is one line too."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return "error: interrupted; nothing partial was written"
    except (OSError, ValueError, FloatingPointError) as e:
        return f"error: {e}"


# --- Reading ---------------------------------------------------------------------------------

def load(path):
    """torch.load with weights_only=True, and one true sentence when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise ValueError(f"{path}: a folder, a pipe or a device, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: an empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles; the errors say it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refused = re.search(r"unsupported GLOBAL (\S+)", str(e))
        if refused:
            raise ValueError(f"{path}: refused: it holds Python objects ({refused[1]}), and "
                             f"loading them could run code") from None
        if path.read_bytes()[:4] == b"PK\x03\x04":  # torch.save writes a zip archive
            raise ValueError(f"{path}: the checkpoint is truncated or corrupt (torch could not "
                             f"read it: {str(e).splitlines()[0][:80]})") from None
        raise ValueError(f"{path}: not a checkpoint (train.py writes torch.save files, and this "
                         f"is another kind of file)") from None


def _int(v, low=0):
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


ARGS = {  # train.py's settings in a checkpoint: the check, and what it asks for
    "iters": (lambda v: _int(v, 1), "a positive integer"),
    "batch": (lambda v: _int(v, 1), "a positive integer"),
    "width": (lambda v: _int(v, 1), "a positive integer"),
    "depth": (lambda v: v in BLOCKS, "a depth of 18 or 34"),
    "plain": (lambda v: isinstance(v, bool), "True or False"),
    "amp": (lambda v: isinstance(v, bool), "True or False"),
    "lr": (_real, "a finite number"),
    "momentum": (_real, "a finite number"),
    "wd": (_real, "a finite number"),
    "seed": (_int, "an integer from 0"),
    "eval_every": (_int, "an integer from 0"),
    "lr_drops": (lambda v: isinstance(v, list) and all(_int(d, 1) for d in v),
                 "a list of positive integers"),
    "data": (lambda v: isinstance(v, str), "a folder name"),
}
OLD_ARGS = {"depth": 18, "plain": False, "eval_every": 1000}  # what older checkpoints mean


def validate(ckpt, path, resume=False):
    """Check the whole structure of a loaded checkpoint; returns its args (with the defaults
    of older files). Raises one ValueError naming the file and the field. `resume=True` also
    checks what only a resumed run reads (momentum, loader, data_fingerprint)."""
    def bad(field, problem):
        return ValueError(f"{path}: not a valid checkpoint: {field} {problem}")

    if not isinstance(ckpt, dict):
        raise bad("the file", f"holds a {type(ckpt).__name__}, not a dict")
    if "data" in ckpt:
        ckpt["data_fingerprint"] = ckpt.pop("data")  # its older name
    if resume and "momentum" not in ckpt and "loader" not in ckpt and "model" in ckpt:
        raise ValueError(f"{path} holds the weights of a run, not the state to resume it (no "
                         f"momentum, no batch order): it can be drawn, not resumed")
    need = ("model", "iteration", "history", "args") + \
        (("momentum", "loader", "data_fingerprint") if resume else ())
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise bad("the file", f"lacks {', '.join(missing)}")
    if not isinstance(ckpt["args"], dict):
        raise bad("args", f"is a {type(ckpt['args']).__name__}, not a dict")
    args = {**OLD_ARGS, **ckpt["args"]}
    for k, (ok, want) in ARGS.items():
        if k not in args:
            raise bad("args", f"lacks {k}")
        if not ok(args[k]):
            raise bad(f"args.{k}", f"is {args[k]!r}, not {want}")

    it = ckpt["iteration"]
    if not _int(it) or it > args["iters"]:
        raise bad("iteration", f"is {it!r}, not an integer from 0 to its --iters {args['iters']}")
    if not isinstance(ckpt["history"], list):
        raise bad("history", f"is a {type(ckpt['history']).__name__}, not a list")
    last = 0
    for i, row in enumerate(ckpt["history"]):
        if not isinstance(row, dict) or not set(HISTORY_KEYS[:-1]) <= set(row):
            raise bad(f"history[{i}]", f"is not a row with {', '.join(HISTORY_KEYS)}")
        for k, v in row.items():
            if not _real(v):
                raise bad(f"history[{i}].{k}", f"is {v!r}, not a finite number")
        if not _int(row["iteration"]) or not last < row["iteration"] <= it:
            raise bad(f"history[{i}].iteration", f"is {row['iteration']!r}: iterations must "
                      f"increase, up to the checkpoint's {it}")
        last = row["iteration"]

    try:
        check_fits_in_memory(args["depth"], args["width"], args["plain"], torch.device("cpu"))
    except ValueError as e:
        raise bad("args.width", f"is too large: {e}") from None
    with torch.device("meta"):  # the shapes the network needs, without memory
        model = ResNet(args["depth"], width=args["width"], plain=args["plain"])
    net = describe(args)

    def check_tensors(field, tensors, want):
        """Floating, finite tensors of the shapes wanted: `tensors` and `want` are dicts."""
        if not isinstance(tensors, dict):
            raise bad(field, f"is {type(tensors).__name__}, not a dict of tensors")
        if set(tensors) != set(want):
            parts = [f"{what} {', '.join(sorted(map(str, keys))[:3])}"
                     for what, keys in (("missing", set(want) - set(tensors)),
                                        ("unexpected", set(tensors) - set(want))) if keys]
            raise bad(field, f"does not fit {net}: {'; '.join(parts)}")
        for k, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise bad(f"{field}[{k}]", f"is a {type(t).__name__}, not a tensor")
            if t.shape != want[k]:
                raise bad(f"{field}[{k}]", f"has shape {tuple(t.shape)}, but {net} needs "
                          f"{tuple(want[k])}")
            if str(k).endswith("num_batches_tracked"):
                continue  # BatchNorm's step counter is an integer
            if not t.is_floating_point():
                raise bad(f"{field}[{k}]", f"is {t.dtype}, not a floating-point tensor")
            if not torch.isfinite(t).all():
                raise bad(f"{field}[{k}]", "holds NaN or infinity")

    check_tensors("model", ckpt["model"], {k: v.shape for k, v in model.state_dict().items()})
    if not resume:
        return args
    shapes = [p.shape for p in model.parameters()]
    if not isinstance(ckpt["momentum"], list) or len(ckpt["momentum"]) != len(shapes):
        raise bad("momentum", f"is not a list of {len(shapes)} tensors, one per parameter of "
                  f"{net}")
    check_tensors("momentum", dict(enumerate(ckpt["momentum"])), dict(enumerate(shapes)))
    loader = ckpt["loader"]
    if not isinstance(loader, dict) or not {"generator", "order", "pos"} <= set(loader):
        raise bad("loader", "is not a dict with generator, order and pos")
    gen, order, pos = loader["generator"], loader["order"], loader["pos"]
    if not isinstance(gen, torch.Tensor) or gen.dtype != torch.uint8:
        raise bad("loader.generator", "is not a generator state (a uint8 tensor)")
    if order is not None and not (isinstance(order, torch.Tensor) and order.dim() == 1
                                  and not order.is_floating_point()
                                  and torch.equal(order.sort().values, torch.arange(len(order)))):
        raise bad("loader.order", "is not a permutation of the training split")
    if not _int(pos) or pos > (0 if order is None else len(order)):
        raise bad("loader.pos", f"is {pos!r}, not a position inside the epoch")
    if not isinstance(ckpt["data_fingerprint"], str):
        raise bad("data_fingerprint", "is not a string")
    return args


def load_valid(path, resume=False):
    """load() then validate(): (checkpoint, its args with the defaults of older files)."""
    ckpt = load(path)
    return ckpt, validate(ckpt, path, resume)

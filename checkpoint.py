"""A run on disk: its checkpoint, its history, Table 1, and what keeps them safe.

train.py writes one checkpoint per run (`run.pt`) and its history beside it (`run.csv`);
visualize.py reads them. Everything between a run and the disk is here:
- `RunLock`: one run per checkpoint (an exclusive `flock` on `run.pt.lock`, held all run);
- `save_atomic`: each save goes to a fresh temporary file in the same folder, is flushed to
  disk, then renamed over the old file in one step: a crash leaves the old file whole;
- `load`: `torch.load(..., weights_only=True)`, so no code in a file can run, and one clear
  line for a file that is truncated, is not a checkpoint, or holds Python objects;
- `validate`: every field checked (type, range, shape, NaN) before anything uses it.

A checkpoint is a dict of plain data and tensors:
    model             the state_dict
    iteration         iterations done
    history           one row per evaluation, HISTORY_KEYS
    args              train.py's flags (depth and plain were added later: absent means 18, False)
    data_fingerprint  what data it was trained on (called "data" in older files)
    momentum          the SGD momentum buffers, in the order of model.parameters()
    loader            the batch order: generator state, permutation, position
"""
import csv
import fcntl
import hashlib
import io
import math
import numbers
import os
import pickle
import pickletools
import signal
import tempfile
import warnings
from pathlib import Path

import torch

from resnet18 import BLOCKS, ResNet, network_name

STUDY_TEST_ACC = {10000: 79.60, 20000: 83.40, 30000: 87.83, 40000: 91.06, 50000: 93.56}  # %
TABLE_EVERY = 10000  # iterations between the rows of Table 1
HISTORY_KEYS = ("iteration", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                "train_images")
OLD_ARGS = {"depth": 18, "plain": False}  # what a checkpoint from before these flags means
ARG_TYPES = {"iters": int, "batch": int, "width": int, "seed": int, "depth": int,
             "lr": float, "momentum": float, "wd": float, "lr_drops": list, "amp": bool,
             "plain": bool, "data": str}
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal


def table(history):
    """Table 1 of the study, in its layout: the rows at every 10,000th iteration and the last
    one, or every evaluation of a run too short for two such rows."""
    rows = [h for h in history if h["iteration"] % TABLE_EVERY == 0 or h is history[-1]]
    if len(rows) < 2:
        rows = history
    lines = ["| Iterations | Train error (%) | Train accuracy (%) | Test error (%) "
             "| Test accuracy (%) | Study test accuracy (%) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for h in rows:
        study = STUDY_TEST_ACC.get(h["iteration"])
        lines.append(f"| {h['iteration']:,} | {100 - h['train_acc']:.2f} | {h['train_acc']:.2f} | "
                     f"{100 - h['test_acc']:.2f} | {h['test_acc']:.2f} | "
                     f"{'' if study is None else f'{study:.2f}'} |")
    return "\n".join(lines)


def describe(args):
    """'ResNet-18, width 16' for the network a run's args describe."""
    args = {**OLD_ARGS, **args}
    return f"{network_name(args['depth'], args['plain'])}, width {args['width']}"


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


def shapes(depth, width, plain):
    """The state_dict shapes of a network, from a model on the meta device (no memory used)."""
    with torch.device("meta"):
        model = ResNet(depth, width=width, plain=plain)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, \
        [tuple(p.shape) for p in model.parameters()]


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


def build_model(args, state=None, device="cpu"):
    """The network a run's args describe, with the weights of a validated state_dict if given."""
    args = {**OLD_ARGS, **args}
    model = ResNet(args["depth"], width=args["width"], plain=args["plain"])
    if state is not None:
        model.load_state_dict(state)
    return model.to(device, memory_format=torch.channels_last)


def fingerprint(*arrays):
    """A short hash of the data, so that --resume can tell a different data set."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --- Writing -------------------------------------------------------------------------------

class RunLock:
    """One run per checkpoint: an exclusive lock on `<ckpt>.lock`, held until release().

    The lock file holds the owner's process id, for the error a second run gets; release()
    deletes it. A lock taken on a file that was deleted meanwhile counts as not taken, so two
    runs never hold locks on two different files of the same name.
    """

    def __init__(self, ckpt):
        self.path = Path(f"{ckpt}.lock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise OSError(f"{self.path}: cannot create the lock file ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(self.path, follow_symlinks=False).st_ino:
                raise BlockingIOError  # its owner deleted it as we locked it: try again later
        except (BlockingIOError, FileNotFoundError):
            owner = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OSError(f"{ckpt} is in use by a running train.py (process {owner}); "
                          f"wait for it to finish, or pick another --ckpt") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self):
        self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the file releases the lock


def check_writable(ckpt):
    """Refuse, before any training, a checkpoint that could not be saved at the end."""
    ckpt = Path(ckpt)
    folder = ckpt.parent
    if ckpt.is_dir():
        raise ValueError(f"--ckpt {ckpt} is a folder: give a file name, such as {ckpt / 'run.pt'}")
    if ckpt.suffix == ".csv":
        raise ValueError(f"--ckpt {ckpt}: the history is written beside the checkpoint as .csv, "
                         f"so the checkpoint cannot be a .csv itself; use a .pt name")
    if ckpt.with_suffix(".csv").is_dir():
        raise ValueError(f"--ckpt {ckpt}: its history file {ckpt.with_suffix('.csv')} is a folder")
    if not folder.is_dir():
        raise ValueError(f"--ckpt {ckpt}: the folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{ckpt.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--ckpt {ckpt}: cannot write in {folder} ({e.strerror})") from None


def save_atomic(path, write):
    """write(file) into a fresh temporary file beside `path`, flush it to disk, then rename it
    over `path` in one step. The temporary name is new (O_EXCL), so nothing planted there
    (a symlink, another run's file) is ever written through."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OSError(f"could not write {path} ({e.strerror or e}); "
                      f"the previous file, if any, is intact") from None


def save_history_csv(path, history):
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_KEYS)
    writer.writeheader()
    writer.writerows(history)
    save_atomic(path, lambda f: f.write(text.getvalue().encode()))


def save(path, ckpt):
    """The checkpoint, then its history as .csv beside it."""
    save_atomic(path, lambda f: torch.save(ckpt, f))
    save_history_csv(Path(path).with_suffix(".csv"), ckpt["history"])


def catch_stops(stop):
    """From now on Ctrl-C, SIGTERM and SIGHUP only append to the list `stop`: the loop then
    saves and stops between two iterations, never in the middle of a step or a save."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stop.append(signum))


def say(line, stop):
    """print; a closed stdout (`train.py | head`, a dead tee) asks the run to save and stop,
    like a signal, and later lines go nowhere instead of killing the run."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        stop.append(signal.SIGPIPE)


# --- Reading -------------------------------------------------------------------------------

def _holds_objects(data):
    """Whether a pickle builds Python objects (which unpickling would run), read without
    unpickling it: its opcodes name a global, or call or build one."""
    try:
        return any(op.name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ",
                               "NEWOBJ_EX", "BUILD") for op, _, _ in pickletools.genops(data))
    except Exception:  # not a whole pickle
        return False


def load(path):
    """torch.load with weights_only=True, and one true sentence when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a pipe or a device?), not a checkpoint")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        with warnings.catch_warnings():  # torch warns about unusual pickles; the errors say it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).split("\n")[0].split(". ")[0] or type(e).__name__  # its first sentence
        if head == ZIP_MAGIC and isinstance(e, pickle.UnpicklingError):
            raise ValueError(f"{path}: refused: it holds Python objects beyond tensors and plain "
                             f"data, and loading those could run code") from None
        if not head:
            raise ValueError(f"{path}: an empty file, not a checkpoint") from None
        if head == ZIP_MAGIC:
            raise ValueError(f"{path}: the checkpoint is truncated or corrupt "
                             f"(torch could not read it: {reason})") from None
        if head[:1] == b"\x80" and _holds_objects(path.read_bytes()):
            raise ValueError(f"{path}: refused: a Python pickle that builds objects, which "
                             f"loading could run as code; not a checkpoint of train.py") from None
        raise ValueError(f"{path}: not a checkpoint (train.py writes torch.save files, "
                         f"and this is another kind of file)") from None


def _bad(path, field, problem):
    return ValueError(f"{path}: not a valid checkpoint: {field} {problem}")


def _is(value, kind):
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) \
            and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_tensors(path, field, tensors, want, net):
    """Floating, finite tensors of the shapes `net` wants: `tensors` and `want` are dicts."""
    if set(tensors) != set(want):
        extra = sorted(map(str, set(tensors) - set(want)))
        missing = sorted(map(str, set(want) - set(tensors)))
        parts = [f"{what} {', '.join(keys[:3])}" + (f" and {len(keys) - 3} more" if len(keys) > 3
                                                  else "")
                 for what, keys in (("missing", missing), ("unexpected", extra)) if keys]
        raise _bad(path, field, f"does not fit {net}: {'; '.join(parts)}")
    for k, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _bad(path, f"{field}[{k}]", f"is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != want[k]:
            raise _bad(path, f"{field}[{k}]", f"has shape {tuple(t.shape)}, but {net} "
                       f"needs {want[k]}")
        if str(k).endswith("num_batches_tracked"):
            continue  # BatchNorm's step counter is an integer
        if not t.is_floating_point():
            raise _bad(path, f"{field}[{k}]", f"is {t.dtype}, not a floating-point tensor")
        if not torch.isfinite(t).all():
            raise _bad(path, f"{field}[{k}]", "holds NaN or infinity")


def validate(ckpt, path, resume=False):
    """Check the whole structure of a loaded checkpoint; returns its args with the defaults
    of older files filled in. Raises one ValueError naming the file and the field.
    `resume=True` also checks what only a resumed run reads (momentum, loader, data)."""
    if not isinstance(ckpt, dict):
        raise _bad(path, "the file", f"holds a {type(ckpt).__name__}, not a dict")
    if "data" in ckpt and "data_fingerprint" not in ckpt:  # the older name
        ckpt["data_fingerprint"] = ckpt.pop("data")
    keys = ("model", "iteration", "history", "args")
    keys += ("momentum", "loader", "data_fingerprint") if resume else ()
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise _bad(path, "the file", f"lacks {', '.join(missing)}")

    args = ckpt["args"]
    if not isinstance(args, dict):
        raise _bad(path, "args", f"is a {type(args).__name__}, not a dict")
    args = {**OLD_ARGS, **args}
    for k, kind in ARG_TYPES.items():
        if k not in args:
            raise _bad(path, "args", f"lacks {k}")
        if not _is(args[k], kind):
            raise _bad(path, f"args.{k}", f"is {args[k]!r}, not of type {kind.__name__}")
    if args["depth"] not in BLOCKS or min(args["width"], args["batch"], args["iters"]) < 1:
        raise _bad(path, "args", "has a depth other than 18 or 34, or a width, batch or iters "
                   "below 1")
    if not all(_is(d, int) and d > 0 for d in args["lr_drops"]):
        raise _bad(path, "args.lr_drops", f"is {args['lr_drops']!r}, not positive integers")

    it = ckpt["iteration"]
    if not _is(it, int) or not 0 <= it <= args["iters"]:
        raise _bad(path, "iteration", f"is {it!r}, not an integer from 0 to its --iters "
                   f"{args['iters']}")

    history = ckpt["history"]
    if not isinstance(history, list):
        raise _bad(path, "history", f"is a {type(history).__name__}, not a list")
    last = 0
    for i, row in enumerate(history):
        if not isinstance(row, dict) or not set(HISTORY_KEYS[:-1]) <= set(row):
            raise _bad(path, f"history[{i}]", f"is not a row with {', '.join(HISTORY_KEYS)}")
        bad = [k for k, v in row.items() if not _is(v, float)]
        if bad:
            raise _bad(path, f"history[{i}].{bad[0]}", f"is {row[bad[0]]!r}, not a finite number")
        if not _is(row["iteration"], int) or not last < row["iteration"] <= it:
            raise _bad(path, f"history[{i}].iteration", f"is {row['iteration']!r}: iterations "
                       f"must increase, up to the checkpoint's {it}")
        last = row["iteration"]

    try:
        check_fits_in_memory(args["depth"], args["width"], args["plain"], torch.device("cpu"))
    except ValueError as e:
        raise _bad(path, "args.width", f"is too large: {e}") from None
    want, param_shapes = shapes(args["depth"], args["width"], args["plain"])
    net = describe(args)
    if not isinstance(ckpt["model"], dict):
        raise _bad(path, "model", f"is {type(ckpt['model']).__name__}, not a dict of tensors")
    _check_tensors(path, "model", ckpt["model"], want, net)
    if not resume:
        return args

    momentum = ckpt["momentum"]
    if not isinstance(momentum, list) or len(momentum) != len(param_shapes):
        raise _bad(path, "momentum", f"is not a list of {len(param_shapes)} tensors, one per "
                   f"parameter of {net}")
    _check_tensors(path, "momentum", dict(enumerate(momentum)), dict(enumerate(param_shapes)),
                   net)

    loader = ckpt["loader"]
    if not isinstance(loader, dict) or not {"generator", "order", "pos"} <= set(loader):
        raise _bad(path, "loader", "is not a dict with generator, order and pos")
    order, pos = loader["order"], loader["pos"]
    generator = loader["generator"]
    if not isinstance(generator, torch.Tensor) or generator.dtype != torch.uint8:
        raise _bad(path, "loader.generator", "is not a generator state (a uint8 tensor)")
    if order is not None and not (isinstance(order, torch.Tensor) and order.dim() == 1
                                  and not order.is_floating_point()
                                  and torch.equal(order.sort().values,
                                                  torch.arange(len(order), device=order.device))):
        raise _bad(path, "loader.order", "is not a permutation of the training split")
    if not _is(pos, int) or not 0 <= pos <= (0 if order is None else len(order)):
        raise _bad(path, "loader.pos", f"is {pos!r}, not a position inside the epoch")
    if not isinstance(ckpt["data_fingerprint"], str):
        raise _bad(path, "data_fingerprint", "is not a string")
    return args


def load_valid(path, resume=False):
    """load() then validate(): (checkpoint, its args with the defaults of older files)."""
    ckpt = load(path)
    return ckpt, validate(ckpt, path, resume)

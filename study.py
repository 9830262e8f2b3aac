"""The study's own numbers, its Table 1 for any run, and the rules by which a run tests its claims.

Fenglin Liu, "Investigating ResNet on the Perspective of Experimental Results and Analysis",
§2: ResNet-18 on CIFAR-10, SGD with momentum 0.9, weight decay 0.0002, batch 32, learning
rate 0.1 divided by 10 at iteration 32,000, 50,000 iterations in all. Its Table 1 gives the
train and test error at every 10,000 iterations; the test accuracies are below.

train.py's flags take their defaults and their allowed values (SETTINGS) from here; it prints
`table(history)` at the end of a run, and visualize.py writes it, with `claims`, into the
report of any checkpoint.
"""
import argparse
import math

from resnet18 import BLOCKS

ITERS = 50000  # iterations in all
DROP = 32000  # the one learning-rate drop (divide by 10)
TEST_ACC = {10000: 79.60, 20000: 83.40, 30000: 87.83, 40000: 91.06, 50000: 93.56}  # % (Table 1)
TABLE_EVERY = 10000  # iterations between the columns of Table 1
# The rules of the verdicts (`claims`), each tolerance stated once:
ACC_POINTS = 3.0  # the test accuracy at 10,000 and 50,000 iterations: within 3 points either way
JUMP = (3.0, 2000)  # across the drop: up by 3 points or more within 2,000 iterations
RISE = 0.05  # late over-fitting: the last test loss at least 5 % above its lowest after the drop
TRAIN_ALL = 99.5  # train accuracy (%) that counts as 100 %
BLANK_SHARE = 0.25  # "a lot of blank convolution outputs": at least a quarter of conv5_x maps
OCCLUDED, RHO = 0.5, 0.5  # localised: occluded P(class) below half; occlusion map's rho below 0.5


# --- Each setting of a run and the values it may take: the types of train.py's flags, and the
# check of a checkpoint's settings (one place per setting) ------------------------------------

def integer(low, high=None):
    def parse(text):
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= (high or math.inf):
            raise argparse.ArgumentTypeError(f"must be an integer from {low}"
                                             f"{f' to {high}' if high else ''}, got {text!r}")
        return int(text)
    return parse


def rate(text):
    """A number from 0 that float32 can hold (the update multiplies float32 tensors by it)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 3.4028234663852886e38:  # float32's largest
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 3.4e38, got {text!r}")
    return value


def depth(text):
    if text not in map(str, BLOCKS):
        raise argparse.ArgumentTypeError(f"must be 18 or 34, got {text!r}")
    return int(text)


switch = {"True": True, "False": False}.__getitem__  # a flag without a value, in a file


SETTINGS = {"iters": integer(1), "batch": integer(1), "lr": rate, "momentum": rate,
            "wd": rate, "lr_drops": integer(1), "depth": depth, "width": integer(8),
            "plain": switch, "seed": integer(0, 2**64 - 1), "eval_every": integer(0),
            "amp": switch, "data": str}


def check_settings(args):
    """Every setting of a file, parsed as its flag would be: the same value, of the same type."""
    for k, parse in SETTINGS.items():
        if k not in args:
            raise ValueError(f"args lacks {k}")
        values = args[k] if k == "lr_drops" else [args[k]]
        try:
            ok = all(type(parse(str(v))) is type(v) and parse(str(v)) == v for v in values)
        except (argparse.ArgumentTypeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise ValueError(f"args.{k} is {args[k]!r}, not a value of --{k.replace('_', '-')}")


def drops(iters):
    """The study's schedule for a run of `iters` iterations: its drop, where the run reaches it.
    A shorter run is the study's first part, at the initial rate throughout."""
    return [DROP] if iters > DROP else []


def schedule(iters, lr_drops=None, saved=None, done=0):
    """The iterations at which the learning rate is divided by 10, decided here only:
    `lr_drops` (--lr-drops) when given, else the study's DROP where the run passes it. A
    resumed run (`saved`: its settings; `done` iterations run) keeps its own drops, the study's
    following a changed --iters; a change must lie ahead. ValueError says what is wrong."""
    if lr_drops is None and saved and saved["lr_drops"] != drops(saved["iters"]):
        lr_drops = saved["lr_drops"]
    new = sorted(drops(iters) if lr_drops is None else lr_drops)
    text = " ".join(map(str, lr_drops or []))
    if len(set(new)) < len(new):
        raise ValueError(f"--lr-drops {text}: an iteration given twice")
    if any(d >= iters for d in new):
        raise ValueError(f"--lr-drops {text} must all be below --iters {iters}: give drops "
                         f"inside the run, or --lr-drops with no value for a constant rate")
    if len(new) > 30:
        raise ValueError(f"--lr-drops: {len(new)} drops would divide the rate by 10**"
                         f"{len(new)}; give at most 30")
    changed = sorted(set(saved["lr_drops"]) ^ set(new)) if saved else []
    if changed and changed[0] < done:
        old = " ".join(map(str, saved["lr_drops"])) or "(none)"
        raise ValueError(f"trained with --lr-drops {old}, a different schedule before "
                         f"iteration {done:,}: leave --lr-drops out")
    return new


def in_words(lr, lr_drops, iters):
    """The learning rate of a run in words, for its start line."""
    if lr_drops:
        return f"learning rate {lr:g}, divided by 10 at " + ", ".join(f"{d:,}" for d in lr_drops)
    first = f" (the study's first {iters:,} iterations; it divides by 10 at {DROP:,})"
    return f"learning rate {lr:g} for the whole run{first if iters <= DROP else ''}"


def table(history):
    """Table 1 in the study's layout, iterations as columns: every 10,000th iteration and the
    last one, or every evaluation of a run too short for two such columns. `history` is a list
    of rows with iteration, train_acc and test_acc (%)."""
    if not history:
        return "no evaluation yet: no Table 1"
    cols = [h for h in history if h["iteration"] % TABLE_EVERY == 0 or h is history[-1]]
    if len(cols) < 2:
        cols = history
    rows = [("Iterations", [f"{h['iteration']:,}" for h in cols]),
            ("Train error (%)", [f"{100 - h['train_acc']:.2f}" for h in cols]),
            ("Train accuracy (%)", [f"{h['train_acc']:.2f}" for h in cols]),
            ("Test error (%)", [f"{100 - h['test_acc']:.2f}" for h in cols]),
            ("Test accuracy (%)", [f"{h['test_acc']:.2f}" for h in cols]),
            ("Study test accuracy (%)",
             [f"{TEST_ACC[h['iteration']]:.2f}" if h["iteration"] in TEST_ACC else "-"
              for h in cols])]
    if not any(h["iteration"] in TEST_ACC for h in cols):
        rows.pop()  # a run that reaches none of the study's columns
    lines = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    lines.insert(1, "|---" + "|---:" * len(cols) + "|")
    return "\n".join(lines)


def claims(history, run, blank=None, located=None):
    """(claim, evidence, verdict) rows; blank, located: what Figures 4 and 7 measured."""
    at = {h["iteration"]: h for h in history}
    drop, done = (run["lr_drops"] or [0])[0], max(at, default=0)
    after = [h for h in history if drop and h["iteration"] > drop]
    a, b = at.get(max((i for i in at if i <= drop), default=0)), (after or [None])[0]
    low = min(after, key=lambda h: h["test_loss"]) if len(after) >= 3 else None
    net = (run["depth"], run["width"], run["plain"]) != (18, 64, False)
    rows = [(f"test accuracy {TEST_ACC[it]:.2f} % at {it:,} iterations (± {ACC_POINTS:g})",
             "the network is not the study's ResNet-18 at width 64" if net else
             None if it in at else f"the run has no evaluation at {it:,}",
             it in at and abs(at[it]["test_acc"] - TEST_ACC[it]) <= ACC_POINTS,
             it in at and f"{at[it]['test_acc']:.2f} %") for it in (10000, ITERS)]
    jump = a and b and b["iteration"] <= drop + JUMP[1]
    rows.append((f"test accuracy jumps at the drop (by {JUMP[0]:g} points or more)",
                 None if jump else "the run has no evaluations either side of a drop",
                 jump and b["test_acc"] - a["test_acc"] >= JUMP[0], jump and
                 f"{a['test_acc']:.2f} % at {a['iteration']:,}, {b['test_acc']:.2f} % at "
                 f"{b['iteration']:,}"))
    rows.append((f"the test loss rises late (the last at least {RISE:.0%} above its lowest "
                 f"after the drop)", None if low else "fewer than three evaluations after a drop",
                 low and after[-1]["test_loss"] >= (1 + RISE) * low["test_loss"], low and
                 f"lowest {low['test_loss']:.4f} at {low['iteration']:,}, last "
                 f"{after[-1]['test_loss']:.4f} at {done:,}"))
    rows.append((f"train accuracy reaches 100 % (at least {TRAIN_ALL} %)", None if done >= ITERS
                 else f"the run is shorter ({done:,} of {ITERS:,} iterations)",
                 done and at[done]["train_acc"] >= TRAIN_ALL,
                 done and f"{at[done]['train_acc']:.2f} % at {done:,}"))
    rows.append((f"many conv5 maps are blank (at least {BLANK_SHARE:.0%})",
                 None if blank else "no test image, so no Figure 4",
                 blank and blank[0] >= BLANK_SHARE * blank[1],
                 blank and f"{blank[0]} of {blank[1]}"))
    rows.append((f"conv5 localises the object (occlusion takes P(class) below {OCCLUDED:g} of "
                 f"itself, and its map passes the randomisation test: rho below {RHO:g})",
                 None if located else "the randomisation test was not asked for (--sanity N)",
                 located and located[0] < OCCLUDED * located[1] and located[2] < RHO, located and
                 f"P {located[1]:.2f}, lowest {located[0]:.2f}; rho {located[2]:.2f}"))
    return [(claim, evidence or "-", f"not measured: {why}" if why else
             "holds" if ok else "does not hold") for claim, why, ok, evidence in rows]

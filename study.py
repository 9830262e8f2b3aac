"""The study's own numbers, and its Table 1 for any run.

Fenglin Liu, "Investigating ResNet on the Perspective of Experimental Results and Analysis",
§2: ResNet-18 on CIFAR-10, SGD with momentum 0.9, weight decay 0.0002, batch 32, learning
rate 0.1 divided by 10 at iteration 32,000, 50,000 iterations in all. Its Table 1 gives the
train and test error at every 10,000 iterations; the test accuracies are below.

train.py prints `table(history)` at the end of a run, visualize.py for any checkpoint.
"""
ITERS = 50000  # iterations in all
DROP = 32000  # the one learning-rate drop (divide by 10)
TEST_ACC = {10000: 79.60, 20000: 83.40, 30000: 87.83, 40000: 91.06, 50000: 93.56}  # % (Table 1)
TABLE_EVERY = 10000  # iterations between the columns of Table 1


def drops(iters):
    """The study's schedule for a run of `iters` iterations: its drop, where the run reaches it.
    A shorter run is the study's first part, at the initial rate throughout."""
    return [DROP] if iters > DROP else []


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
    lines = [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    lines.insert(1, "|---" + "|---:" * len(cols) + "|")
    return "\n".join(lines)


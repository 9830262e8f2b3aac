"""Shared helpers: synthetic CIFAR-10 files in the official binary layout, and the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cifar  # noqa: E402


def write_batch(path, images, labels):
    """The inverse of cifar.read_batch, written independently: label byte, then R, G, B planes."""
    records = np.concatenate([np.asarray(labels, np.uint8)[:, None], np.asarray(images, np.uint8).reshape(len(labels), -1)], 1)
    Path(path).write_bytes(records.tobytes())


def make_cifar(folder, per_batch=16, n_test=32, seed=0):
    """A tiny CIFAR-10 in `folder`: 5 training batch files and a test file of random images whose
    mean colour depends on the label (so a network can learn something), labels 0-9."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [(n, per_batch) for n in cifar.TRAIN_FILES] + [(cifar.TEST_FILES[0], n_test)]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 120, (n, 3, 32, 32)) + (labels * 12)[:, None, None, None]
        write_batch(folder / name, images, labels)
    return folder


@pytest.fixture
def tiny_data(tmp_path):
    return make_cifar(tmp_path / "data")


def run_cli(script, *args, cwd, timeout=120):
    """Run one of the project's scripts as a user would; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def real_data_dir():
    folder = os.environ.get("CIFAR10_DIR")
    if not folder or not Path(folder).is_dir():
        pytest.skip("set CIFAR10_DIR to a cifar-10-batches-bin folder to run the tests on real images "
                    "(.ci/run sets it to ../shared/cifar10/cifar-10-batches-bin)")
    return Path(folder)

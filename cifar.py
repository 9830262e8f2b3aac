"""CIFAR-10 from its official binary files, and the study's augmentation, on any device.

The binary layout (https://www.cs.toronto.edu/~kriz/cifar.html): each file is a run of
3,073-byte records, 1 label byte (0-9) then the 32 x 32 image as 1,024 red, 1,024 green and
1,024 blue bytes, each plane row-major. `data_batch_1.bin` ... `data_batch_5.bin` hold the
50,000 training images, `test_batch.bin` the 10,000 test images.

Augmentation follows He et al. 2016 §4.2, as the study does: pad 4 pixels on each side,
take a random 32 x 32 crop, flip horizontally with probability 0.5. It runs on whole
batches, as tensor operations on the device that holds the data.

    python cifar.py ./data    # downloads CIFAR-10 if needed and prints what it read
"""
import argparse
import functools
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # as published on the page above
FOLDER = "cifar-10-batches-bin"  # what the archive extracts to
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
RECORD_BYTES = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes
# Per-channel mean and standard deviation of the 50,000 training images' pixels in [0, 1], as
# used throughout the CIFAR literature; the test set is normalised with the same.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read_batch(path):
    """One binary batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    raw = Path(path).read_bytes()
    if not raw or len(raw) % RECORD_BYTES:
        raise ValueError(f"{path}: {len(raw):,} bytes, not a whole number of {RECORD_BYTES}-byte "
                         f"CIFAR-10 records (truncated?)")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)  # (N,)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{path}: record {bad} has label {labels[bad]}, expected 0-9")
    images = records[:, 1:].reshape(-1, 3, 32, 32)  # (N, 3072) -> (N, 3, 32, 32): R, G, B planes
    return images.copy(), labels


def find_folder(root):
    """`root` itself when it holds the batch files, else `root/cifar-10-batches-bin`."""
    root = Path(root)
    return root / FOLDER if (root / FOLDER).is_dir() else root


def load_cifar10(root, train=True):
    """The training split (five batch files) or the test split, concatenated, as numpy arrays."""
    folder = find_folder(root)
    names = TRAIN_FILES if train else TEST_FILES
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(missing)}. Get CIFAR-10 with `python cifar.py {root}` "
            f"(or train.py without --no-download), or fetch {URL} by hand and put it, or the "
            f"{FOLDER} folder extracted from it, in {root}")
    parts = [read_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_or_download(root, download=True):
    """(train images, labels, test images, labels), downloaded first where `root` has none."""
    if download and not any((find_folder(root) / n).exists() for n in TRAIN_FILES + TEST_FILES):
        download_cifar10(root)
    return (*load_cifar10(root, train=True), *load_cifar10(root, train=False))


def download_cifar10(root, url=URL, md5=MD5):
    """Fetch, check and extract CIFAR-10 into `root/cifar-10-batches-bin`, or use the archive in
    `root` if one was fetched by hand. Both happen in a temporary folder that goes whatever
    happens: nothing is put in `root` unless the MD5 matches and tarfile's "data" filter passes
    every member (no links out, no absolute paths, nothing outside the folder)."""
    root = Path(root)
    archive = root / Path(url).name
    with tempfile.TemporaryDirectory() as tmp:
        if not archive.exists():
            archive = Path(tmp) / archive.name
            print(f"downloading {url} (162 MB)", flush=True)
            try:  # a server silent for 60 s is gone: urlopen raises TimeoutError
                with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as e:
                raise ConnectionError(f"no CIFAR-10 in {root}, and {url} could not be downloaded "
                                      f"({getattr(e, 'reason', e)}): fetch it by hand and put it "
                                      f"in {root}/ (the .tar.gz or the extracted {FOLDER} "
                                      f"folder)") from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != md5:
            raise ValueError(f"{archive}: MD5 is {digest}, expected {md5} (corrupt or "
                             f"incomplete download; delete it and try again)")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except tarfile.TarError as e:  # the data filter's refusals are TarErrors
            raise ValueError(f"{archive}: could not extract it ({e})") from None
        root.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / FOLDER, root / FOLDER)
    return root / FOLDER


def fingerprint(*arrays):
    """A short hash of the data, so that a resume or a figure can tell other images."""
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()[:16]


@functools.cache
def _mean_std(device):
    """MEAN and STD in pixel units, (1, 3, 1, 1), copied to each device once, not every step."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)


def normalize(images):
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W), standardised per channel with MEAN and STD,
    in channels_last memory order (the model's fast layout). Every image the model sees."""
    mean, std = _mean_std(images.device)
    return (images.contiguous(memory_format=torch.channels_last).float() - mean) / std


def augment(images, generator):
    """Random 32 x 32 crops of the zero-padded images, each mirrored with probability 0.5:
    uint8 (B, 3, 32, 32) -> uint8 (B, 3, 32, 32). One gather does crop and flip for the whole
    batch: output pixel (i, j) of image b is padded pixel (dy_b + i, dx_b + j), or
    (dy_b + i, dx_b + 31 - j) when b is flipped."""
    B, dev = images.shape[0], images.device
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))  # (B, 3, 40, 40), zeros around
    dy, dx = torch.randint(0, 9, (2, B, 1), device=dev, generator=generator)  # (B, 1) in 0..8
    flip = torch.rand(B, 1, device=dev, generator=generator) < 0.5  # (B, 1)
    i = torch.arange(32, device=dev)  # (32,)
    rows = dy + i  # (B, 32)
    cols = dx + torch.where(flip, 31 - i, i)  # (B, 32)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    c = torch.arange(3, device=dev).view(1, 3, 1, 1)
    return padded[b, c, rows.view(B, 1, 32, 1), cols.view(B, 1, 1, 32)]  # (B, 3, 32, 32)


class Loader:
    """Endless shuffled, augmented, normalised batches, `next(loader)`, from a split held on
    one device as one uint8 tensor (150 MB for 50,000 images). Each epoch is a permutation cut
    into batches (the last incomplete one dropped); the generator, the permutation and the
    position in it are the whole state, so a resumed run sees the batches it would have seen."""

    def __init__(self, images, labels, batch, device, seed=0, augment=True):
        if not 1 <= batch <= len(labels):
            raise ValueError(f"batch size {batch} must be between 1 and the {len(labels)} "
                             f"images of the split")
        self.images = torch.as_tensor(images).to(device)  # (N, 3, 32, 32) uint8
        self.labels = torch.as_tensor(labels).to(device)  # (N,) int64
        self.batch, self.augment = batch, augment
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.order, self.pos = None, 0  # current epoch's permutation, and the next index in it

    def __next__(self):
        if self.order is None or self.pos + self.batch > len(self.order):
            self.order = torch.randperm(len(self.labels), device=self.images.device,
                                        generator=self.generator)
            self.pos = 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        x = self.images[idx]  # (B, 3, 32, 32) uint8
        if self.augment:
            x = augment(x, self.generator)
        return normalize(x), self.labels[idx]

    def state_dict(self):
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state):
        try:
            self.generator.set_state(state["generator"])
        except RuntimeError:  # a CUDA generator's state is another size than the CPU's
            raise ValueError("the run started on another kind of device: resume it there") \
                from None
        self.order = None if state["order"] is None else state["order"].to(self.images.device)
        self.pos = state["pos"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="./data", help="CIFAR-10 folder (default ./data)")
    _, train_y, _, test_y = load_or_download(p.parse_args(argv).root)
    for split, labels in (("train", train_y), ("test", test_y)):
        print(f"{split}: {len(labels)} images, per class "
              f"{np.bincount(labels, minlength=10).tolist()}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:  # no network, a bad archive, a bad batch file
        sys.exit(f"error: {e}")

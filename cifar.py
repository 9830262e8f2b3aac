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
import stat
import sys
import tarfile
import time
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
RECORD_BYTES = 1 + 3 * 32 * 32
MAX_RECORDS = 60000  # all of CIFAR-10; a file larger than that is not a CIFAR-10 batch
# Per-channel mean and standard deviation of the 50,000 training images, pixels scaled to
# [0, 1] (computed over all 50,000 x 32 x 32 pixels of each channel; the figures are the
# ones used throughout the CIFAR literature). The test set is normalised with the same.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def read_batch(path):
    """One binary batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    path = Path(path)
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise ValueError(f"{path}: a folder, where a CIFAR-10 batch file should be")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: not a regular file (a pipe or a device?), where a CIFAR-10 "
                         f"batch file should be")
    if path.stat().st_size > MAX_RECORDS * RECORD_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes, more than all of CIFAR-10 "
                         f"({MAX_RECORDS:,} records of {RECORD_BYTES} bytes)")
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0:
        raise ValueError(f"{path}: empty file, expected {RECORD_BYTES}-byte CIFAR-10 records")
    if raw.size % RECORD_BYTES:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte "
                         f"records (truncated or extra bytes?)")
    records = raw.reshape(-1, RECORD_BYTES)  # (N, 3073)
    labels = records[:, 0].astype(np.int64)  # (N,)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path}: record {bad[0]} has label {labels[bad[0]]}, expected 0-9")
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
    """(train images, train labels, test images, test labels) from `root`, downloading
    CIFAR-10 first when `root` holds none of its files (and `download` is set)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--data {root}: a file, not a folder")
    folder = find_folder(root)
    if download and not any((folder / n).exists() for n in TRAIN_FILES + TEST_FILES):
        created = not root.exists()
        try:
            download_cifar10(root)
        except BaseException as e:  # Ctrl-C too
            if created:  # leave no folder behind a mistyped --data
                shutil.rmtree(root, ignore_errors=True)
            if not isinstance(e, (OSError, ValueError)):
                raise
            raise type(e)(f"no CIFAR-10 files in {root}, so a download was tried: {e}") from None
    return (*load_cifar10(root, train=True), *load_cifar10(root, train=False))


def _safe_extract(archive, dest):
    """Extract a tar archive into `dest`, refusing any member that would land outside it."""
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar.getmembers():
                target = (dest / m.name).resolve()
                unsafe = not (m.isfile() or m.isdir()) or Path(m.name).is_absolute() \
                    or not target.is_relative_to(dest)
                if unsafe:
                    raise ValueError(f"{archive}: refusing unsafe member {m.name!r} (links, "
                                     f"absolute "
                                     f"paths and paths outside the folder are not extracted)")
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 checks again, and drops modes
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{archive}: could not extract it ({e})") from None


def fetch(url, path, stall=60, min_rate=10_000):
    """Download `url` into a new file `path`, with progress on stderr once a second; a server
    that sends under `min_rate` bytes/s over `stall` seconds counts as gone (a TimeoutError)."""
    with urllib.request.urlopen(url, timeout=stall) as r, open(path, "wb") as f:
        total, done = int(r.headers.get("Content-Length") or 0), 0
        shown = mark = time.time()
        mark_done = 0
        try:
            while chunk := r.read1(1 << 20):
                f.write(chunk)
                done += len(chunk)
                now = time.time()
                if now - shown >= 1:
                    print(f"\rdownloading {url}: {done >> 20} / {total >> 20} MiB", end="",
                          file=sys.stderr, flush=True)
                    shown = now
                if now - mark >= stall:
                    if done - mark_done < min_rate * stall:
                        raise TimeoutError(f"under {min_rate // 1000} kB/s for {stall} s")
                    mark, mark_done = now, done
        finally:
            print(file=sys.stderr)  # error lines start on a line of their own


def download_cifar10(root, url=URL, md5=MD5):
    """Fetch, check and extract CIFAR-10 into `root/cifar-10-batches-bin`; return that folder.

    An archive already in `root` (fetched by hand) is used instead of the network. Nothing is
    put in place unless the MD5 matches and every member extracts inside `root`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / Path(url).name
    if archive.exists() and not archive.is_file():
        raise ValueError(f"{archive}: not a file, where the CIFAR-10 archive would be; "
                         f"move it away and try again")
    fetched = not archive.exists()
    if fetched:
        archive = root / (Path(url).name + ".part")
        try:
            fetch(url, archive)
        except BaseException as e:  # Ctrl-C too: no partial file is left
            archive.unlink(missing_ok=True)
            if not isinstance(e, OSError):
                raise
            raise ConnectionError(f"could not download {url} ({getattr(e, 'reason', e)}); "
                                  f"fetch it by hand and put it in {root}/ (the .tar.gz or the "
                                  f"extracted {FOLDER} folder)") from None
    try:
        digest = hashlib.md5(archive.read_bytes()).hexdigest()
        if digest != md5:
            raise ValueError(f"{archive}: MD5 is {digest}, expected {md5} (corrupt or "
                             f"incomplete download); "
                             + ("it was removed" if fetched else "delete it and try again"))
        tmp = root / (FOLDER + ".extracting")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _safe_extract(archive, tmp)
            if not (tmp / FOLDER).is_dir():
                raise ValueError(f"{archive}: has no {FOLDER} folder; is it the binary "
                                 f"version of CIFAR-10?")
            (tmp / FOLDER).replace(root / FOLDER)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if fetched:
            archive.unlink(missing_ok=True)
    return root / FOLDER


@functools.cache
def _mean_std(device):
    """MEAN and STD in pixel units as (1, 3, 1, 1) tensors, copied to each device once (a copy
    from the host in every step would make the host wait for the GPU)."""
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255,
            torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)


def normalize(images):
    """uint8 (B, 3, H, W) -> float32 (B, 3, H, W), standardised per channel with MEAN and STD,
    in channels_last memory order (the layout the model is kept in: the fast one for its
    convolutions). Every image the model sees passes here."""
    mean, std = _mean_std(images.device)
    return (images.contiguous(memory_format=torch.channels_last).float() - mean) / std


def augment(images, generator):
    """Random 32 x 32 crops of the zero-padded images, each mirrored with probability 0.5.

    uint8 (B, 3, 32, 32) -> uint8 (B, 3, 32, 32). One gather does crop and flip for the whole
    batch: output pixel (i, j) of image b is padded pixel (dy_b + i, dx_b + j), or
    (dy_b + i, dx_b + 31 - j) when b is flipped.
    """
    B, dev = images.shape[0], images.device
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))  # (B, 3, 40, 40), zeros around
    # (B, 1) offsets in 0..8
    dy, dx = torch.randint(0, 9, (2, B, 1), device=dev, generator=generator)
    flip = torch.rand(B, 1, device=dev, generator=generator) < 0.5  # (B, 1)
    i = torch.arange(32, device=dev)  # (32,)
    rows = dy + i  # (B, 32)
    cols = dx + torch.where(flip, 31 - i, i)  # (B, 32)
    b = torch.arange(B, device=dev).view(B, 1, 1, 1)
    c = torch.arange(3, device=dev).view(1, 3, 1, 1)
    return padded[b, c, rows.view(B, 1, 32, 1), cols.view(B, 1, 1, 32)]  # (B, 3, 32, 32)


class Loader:
    """Endless shuffled, augmented, normalised batches from a split held on one device.

    The whole split is one uint8 tensor on `device` (150 MB for the 50,000 training images).
    Each epoch is a fresh permutation from `generator`, cut into batches of `batch`; the last
    incomplete batch of an epoch is dropped, so each image is seen at most once per epoch. The
    generator, the permutation and the position in it are the whole state: `state_dict()` and
    `load_state_dict()` let a resumed run see exactly the batches it would have seen.
    """

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

    def __iter__(self):
        return self

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
        except RuntimeError:
            raise ValueError("the saved batch order comes from a run on another kind of device; "
                             "resume it on the device it started on") from None
        self.order = None if state["order"] is None else state["order"].to(self.images.device)
        self.pos = state["pos"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", default="./data",
                   help="CIFAR-10 folder; downloaded there if it holds none (default ./data)")
    root = p.parse_args().root
    try:
        _, train_y, _, test_y = load_or_download(root)
        for split, labels in (("train", train_y), ("test", test_y)):
            print(f"{split}: {len(labels)} images, per class "
                  f"{np.bincount(labels, minlength=10).tolist()}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted; nothing partial was left")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")

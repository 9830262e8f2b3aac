"""The binary reader, the download, the augmentation and the loader of cifar.py."""
import numpy as np
import pytest
import torch

import cifar
from conftest import crops, make_cifar, real_data_dir, tgz_of, write_batch


def test_read_batch_layout(tmp_path):
    # (3, 3, 32, 32): pixel = 100 * plane + 3 * row // 2 + column % 3 + record, all different
    c, r, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    images = np.stack([100 * c + 3 * r // 2 + x % 3 + k for k in range(3)]).astype(np.uint8)
    labels = np.array([9, 0, 4])
    record = bytes([9]) + b"".join(bytes(images[0, c].ravel()) for c in range(3))
    write_batch(tmp_path / "b.bin", images, labels)
    assert (tmp_path / "b.bin").read_bytes()[:3073] == record  # the writer is the official layout
    got_images, got_labels = cifar.read_batch(tmp_path / "b.bin")
    assert got_images.dtype == np.uint8 and got_images.shape == (3, 3, 32, 32)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [9, 0, 4]
    assert np.array_equal(got_images, images)
    assert got_images[1, 2, 5, 7] == 200 + 7 + 1 + 1  # blue plane, row 5, column 7, record 1


def test_load_cifar10_from_either_folder(tmp_path):
    folder = make_cifar(tmp_path / cifar.FOLDER, per_batch=4, n_test=6)
    for root in (tmp_path, folder):
        x, y = cifar.load_cifar10(root, train=True)
        assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
        assert cifar.load_cifar10(root, train=False)[0].shape == (6, 3, 32, 32)


def test_download_right_md5_extracts_and_loads(tmp_path):
    archive = tmp_path / "srv" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    md5 = tgz_of(make_cifar(tmp_path / "src", per_batch=3, n_test=4), archive)
    folder = cifar.download_cifar10(tmp_path / "data", url=archive.as_uri(), md5=md5)
    assert folder == tmp_path / "data" / cifar.FOLDER
    assert cifar.load_cifar10(tmp_path / "data")[0].shape == (15, 3, 32, 32)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [cifar.FOLDER]  # no leftovers


def test_augment_is_a_seeded_crop_of_the_padded_image_or_its_mirror():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = cifar.augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, cifar.augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, cifar.augment(images, torch.Generator().manual_seed(1)))
    assert out.shape == images.shape and out.dtype == torch.uint8
    flipped = 0
    for img, original in zip(out, images):
        matches = [f for f, c in crops(original) if torch.equal(img, c)]
        assert matches, "not a crop of the padded image or of its mirror"
        flipped += matches[0]
    assert 16 <= flipped <= 48  # about half of 64


def test_normalize_uses_the_published_training_statistics():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # per channel, in [0, 1]
    x = torch.tensor(mean).view(1, 3, 1, 1).mul(255).round().to(torch.uint8).expand(1, 3, 2, 2)
    assert cifar.normalize(x).abs().max() < 0.01
    white = torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)
    assert cifar.normalize(white).flatten().tolist() == pytest.approx(
        [(1 - m) / s for m, s in zip(mean, std)])


def test_loader_epochs_are_permutations_and_state_resumes():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    images = images.expand(40, 3, 32, 32).contiguous()
    labels = torch.arange(40)
    loader = cifar.Loader(images, labels, batch=8, device="cpu", seed=5, augment=False)
    epoch = torch.cat([next(loader)[1] for _ in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))  # each image once per epoch
    epoch2 = torch.cat([next(loader)[1] for _ in range(5)])
    assert sorted(epoch2.tolist()) == list(range(40)) and not torch.equal(epoch, epoch2)

    a = cifar.Loader(images, labels, batch=8, device="cpu", seed=5)
    for _ in range(7):
        next(a)
    b = cifar.Loader(images, labels, batch=8, device="cpu", seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(6):  # across an epoch boundary
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, _ = next(cifar.Loader(images, labels, batch=8, device="cpu", seed=5))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="batch size 41"):
        cifar.Loader(images, labels, batch=41, device="cpu")


def test_real_cifar10_sample():
    folder = real_data_dir()
    x, y = cifar.load_cifar10(folder, train=True)
    xt, yt = cifar.load_cifar10(folder, train=False)
    assert len(x) % 5 == 0 and len(x) >= 10000 and len(xt) >= 2000
    assert x.shape[1:] == (3, 32, 32) and y.min() == 0 and y.max() == 9
    for labels in (y, yt):
        counts = np.bincount(labels, minlength=10)
        assert (counts > 0.07 * len(labels)).all(), counts  # every class present, roughly balanced
    # Real photographs: neighbouring pixels are strongly correlated, and the channel means are
    # close to the published statistics of the full training set.
    means = x.reshape(len(x), 3, -1).mean((0, 2)) / 255
    assert np.allclose(means, cifar.MEAN, atol=0.02), means
    assert np.corrcoef(x[:, 0, :, :-1].ravel()[:10**6], x[:, 0, :, 1:].ravel()[:10**6])[0, 1] > 0.8

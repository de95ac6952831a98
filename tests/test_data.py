import gzip
import hashlib
import struct
import time
import zipfile

import numpy as np
import pytest
import torch

from epdo.data import DatasetError, load_fashion_rot, load_mnist_rot, parse_amat, random_rotation, synthetic
from epdo.data.datasets import MNIST_ROT_FILES, MNIST_ROT_ZIP, read_idx


def write_amat(path, rows, seed=0, bad_line=None):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(rows):
            values = [f"{v:.6f}" for v in rng.uniform(0, 1, 784)] + [str(int(rng.integers(0, 10)))]
            if i + 1 == bad_line:
                values = values[:100]
            f.write("  ".join(values) + "\n")


def test_parse_amat_shapes_and_errors(tmp_path):
    good = tmp_path / "good.amat"
    write_amat(good, 5)
    images, labels = parse_amat(good, rows=5)
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.float32 and labels.dtype == np.int64
    bad = tmp_path / "bad.amat"
    write_amat(bad, 5, bad_line=3)
    with pytest.raises(DatasetError, match=r"bad.amat, line 3: expected 785 numbers, found 100"):
        parse_amat(bad)
    with pytest.raises(DatasetError, match="expected 7 rows, found 5"):
        parse_amat(good, rows=7)


def make_archive(tmp_path, rows=(6, 4)):
    source = tmp_path / "source"
    source.mkdir()
    for (name, _), n in zip(MNIST_ROT_FILES.values(), rows):
        write_amat(source / name, n, seed=n)
    archive = source / MNIST_ROT_ZIP
    with zipfile.ZipFile(archive, "w") as z:
        for name, _ in MNIST_ROT_FILES.values():
            z.write(source / name, f"mnist_rotation_new/{name}")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_mnist_rot_download_checksum_and_cache(tmp_path):
    archive, md5 = make_archive(tmp_path)
    cache = tmp_path / "cache"
    train, test = load_mnist_rot(cache, url=archive.as_uri(), md5=md5, rows=(6, 4))
    assert len(train) == 6 and len(test) == 4 and train.images.shape == (6, 1, 28, 28)
    assert (cache / "mnist_rot.npz").exists() and (cache / "mnist_rotation_new.sha256").exists()
    again, _ = load_mnist_rot(cache, download_missing=False)  # from the .npz cache
    torch.testing.assert_close(again.images, train.images)


def test_mnist_rot_bad_checksum(tmp_path):
    archive, _ = make_archive(tmp_path)
    with pytest.raises(DatasetError, match="MD5 .* is not the expected"):
        load_mnist_rot(tmp_path / "cache", url=archive.as_uri(), md5="0" * 32, rows=(6, 4))


def test_mnist_rot_offline_fails_fast_with_instructions(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        load_mnist_rot(tmp_path / "cache", url="http://127.0.0.1:9/mnist_rotation_new.zip")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "mnist_rotation_new.zip" in message and str(tmp_path / "cache") in message and ".amat" in message


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_rot_from_idx_files_is_seeded_and_cached(tmp_path):
    source = tmp_path / "idx"
    source.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 12)):
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    assert read_idx(source / "t10k-images-idx3-ubyte.gz").shape == (12, 28, 28)
    train, test = load_fashion_rot(tmp_path / "a", seed=3, train_size=20, source_dirs=(source,))
    again, _ = load_fashion_rot(tmp_path / "b", seed=3, train_size=20, source_dirs=(source,))
    other, _ = load_fashion_rot(tmp_path / "c", seed=4, train_size=20, source_dirs=(source,))
    assert len(train) == 20 and len(test) == 12 and 0 <= float(train.images.min()) <= float(train.images.max()) <= 1
    torch.testing.assert_close(train.images, again.images)
    assert not torch.equal(train.images, other.images)
    assert list((tmp_path / "a").glob("*.npz"))
    with pytest.raises(DatasetError, match="dataset-fashion-mnist"):
        load_fashion_rot(tmp_path / "d", source_dirs=(tmp_path / "nowhere",))


def test_synthetic_and_augmentation():
    train, test = synthetic(train_size=20, test_size=10)
    assert train.images.shape == (20, 1, 28, 28) and int(train.labels.max()) < 10
    generator = torch.Generator().manual_seed(0)
    augmented = random_rotation(train.images, generator)
    assert augmented.shape == train.images.shape and not torch.allclose(augmented, train.images)
    # mass is roughly preserved by rotation (content stays inside the frame for these centred blobs)
    ratio = augmented.sum() / train.images.sum()
    assert 0.8 < float(ratio) < 1.2

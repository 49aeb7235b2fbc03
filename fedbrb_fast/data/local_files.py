"""Readers for datasets kept as files in a local folder: MNIST (IDX) and CIFAR-10/100 (binary).

Nothing here downloads; a missing file is an error that says what to put where. Only raw byte
formats are parsed: the python version of CIFAR is a pickle, and unpickling can run arbitrary
code, so it is refused rather than read.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NO_DOWNLOAD = "datasets are never downloaded; put the files there yourself"

# IDX: 2 zero bytes, a type code (0x08 = unsigned byte), the number of dims, then each dim as a
# big-endian uint32, then the data in row-major order.
_IDX_UBYTE = 0x08

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

CIFAR_IMAGE_SHAPE = (3, 32, 32)
_CIFAR_PIXELS = math.prod(CIFAR_IMAGE_SHAPE)


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as a read-only uint8 array of its dims."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from err
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX header with {ndim} dims")
    zeros, type_code, file_ndim = struct.unpack(">HBB", data[:4])
    if zeros != 0 or type_code != _IDX_UBYTE or file_ndim != ndim:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}, expected 0x0000{_IDX_UBYTE:02x}{ndim:02x} "
            f"(unsigned bytes, {ndim} dims)"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise ValueError(
            f"{path}: header says dims {dims} ({math.prod(dims)} bytes) but the file holds "
            f"{len(data) - header} data bytes (truncated or corrupted)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist(root: str | Path | None) -> dict[str, np.ndarray]:
    """The four MNIST arrays (uint8 images [n, 28, 28], labels [n]) keyed like MNIST_FILES."""
    folder = _require_folder("mnist", root, [f"{name}[.gz]" for name in MNIST_FILES.values()])
    paths, missing = {}, []
    for key, name in MNIST_FILES.items():
        # The uncompressed file wins when both exist: it is what a user who unpacked them meant.
        found = [p for p in (folder / name, folder / f"{name}.gz") if p.is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"mnist: {folder} lacks {', '.join(missing)} (each may also be .gz); expected the four IDX "
            f"files {', '.join(MNIST_FILES.values())}; {_NO_DOWNLOAD}"
        )
    arrays = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], ndim=3)
        labels = read_idx(paths[f"{split}_labels"], ndim=1)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{paths[f'{split}_images']}: images are {images.shape[1:]}, MNIST is 28x28")
        if len(labels) != len(images):
            raise ValueError(
                f"{paths[f'{split}_labels']}: {len(labels)} labels for {len(images)} images in "
                f"{paths[f'{split}_images'].name}"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{paths[f'{split}_labels']}: label {labels.max()} is not a digit 0..9")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


@dataclass(frozen=True)
class CifarLayout:
    subdir: str  # the folder the official binary archive unpacks to
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_bytes: int  # cifar-10: the label; cifar-100: coarse then fine label
    num_classes: int
    pickle_markers: tuple[str, ...]  # names that betray the python (pickle) version


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        subdir="cifar-10-batches-bin",
        train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test=("test_batch.bin",),
        label_bytes=1,
        num_classes=10,
        pickle_markers=("cifar-10-batches-py", "data_batch_1"),
    ),
    "cifar100": CifarLayout(
        subdir="cifar-100-binary",
        train=("train.bin",),
        test=("test.bin",),
        label_bytes=2,
        num_classes=100,
        pickle_markers=("cifar-100-python", "train"),
    ),
}


def read_cifar_binary(path: str | Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 3, 32, 32] in CHW order, labels uint8 [n]) from one binary CIFAR file."""
    path = Path(path)
    data = path.read_bytes()
    record = layout.label_bytes + _CIFAR_PIXELS
    if not data or len(data) % record:
        raise ValueError(
            f"{path}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records "
            f"(truncated, or not the binary version)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    # The last label byte is cifar-10's only label and cifar-100's fine label.
    labels = records[:, layout.label_bytes - 1]
    if labels.max() >= layout.num_classes:
        raise ValueError(f"{path}: label {labels.max()} is out of range for {layout.num_classes} classes")
    if layout.label_bytes == 2 and records[:, 0].max() >= 20:
        raise ValueError(f"{path}: coarse label {records[:, 0].max()} is out of range for 20 superclasses")
    return records[:, layout.label_bytes :].reshape(-1, *CIFAR_IMAGE_SHAPE), labels


def read_cifar(name: str, root: str | Path | None) -> dict[str, np.ndarray]:
    """Train/test images and labels of cifar10/cifar100 from `root` or `root/<archive folder>`."""
    layout = CIFAR_LAYOUTS[name]
    files = layout.train + layout.test
    top = _require_folder(name, root, files)
    candidates = (top, top / layout.subdir)
    folder = next((c for c in candidates if all((c / f).is_file() for f in files)), None)
    if folder is None:
        hint = ""
        if any((c / m).exists() for c in candidates for m in layout.pickle_markers):
            hint = " (found the python/pickle version, which is never loaded: use the binary version)"
        raise FileNotFoundError(
            f"{name}: expected the binary files {', '.join(files)} in {top} or {top / layout.subdir}"
            f"{hint}; {_NO_DOWNLOAD}"
        )
    arrays = {}
    for split, split_files in (("train", layout.train), ("test", layout.test)):
        parts = [read_cifar_binary(folder / f, layout) for f in split_files]
        arrays[f"{split}_images"] = np.concatenate([images for images, _ in parts])
        arrays[f"{split}_labels"] = np.concatenate([labels for _, labels in parts])
    return arrays


def _require_folder(name: str, root: str | Path | None, expected: tuple[str, ...] | list[str]) -> Path:
    if root is None:
        raise FileNotFoundError(
            f"{name}: is read from local files; pass root=<folder with {', '.join(expected)}>; {_NO_DOWNLOAD}"
        )
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name}: folder {folder} does not exist; expected {', '.join(expected)} there; {_NO_DOWNLOAD}"
        )
    return folder

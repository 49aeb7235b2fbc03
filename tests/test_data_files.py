"""MNIST (IDX) and CIFAR-10/100 (binary) loaders, fed small files written in the exact formats."""

import gzip
import struct

import numpy as np
import pytest
import torch

from fedbrb_fast.data import load_dataset
from fedbrb_fast.data.local_files import read_cifar, read_idx, read_mnist

# --- writers of the standard formats ------------------------------------------------------------


def write_idx(path, array, *, magic=None):
    """IDX: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, then row-major bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else struct.pack(">HBB", 0, 0x08, array.ndim)
    payload = header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)


def make_mnist(folder, rng, n_train=20, n_test=10, gz=()):
    """Random MNIST files in `folder`; names listed in `gz` are written gzipped."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    for name, array in arrays.items():
        write_idx(folder / (name + ".gz" if name in gz else name), array)
    return arrays


def cifar_records(images, *labels):
    """Binary CIFAR records: the label byte(s) then 3072 pixel bytes (R plane, G plane, B plane)."""
    columns = [np.asarray(label, dtype=np.uint8)[:, None] for label in labels]
    return np.hstack(columns + [images.reshape(len(images), -1)]).astype(np.uint8).tobytes()


def make_cifar10(folder, rng, per_batch=4, n_test=10):
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch, dtype=np.uint8)
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records(x, y))
        images.append(x)
        labels.append(y)
    x_test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    y_test = rng.integers(0, 10, n_test, dtype=np.uint8)
    (folder / "test_batch.bin").write_bytes(cifar_records(x_test, y_test))
    return np.concatenate(images), np.concatenate(labels), x_test, y_test


def make_cifar100(folder, rng, n_train=20, n_test=10):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = rng.integers(0, 100, n, dtype=np.uint8)
        (folder / name).write_bytes(cifar_records(x, fine // 5, fine))
        out += [x, fine]
    return out


def expected_standardized(train_u8, test_u8):
    """pixel/255 standardized per channel (axis 1) with the train set's population statistics."""
    train, test = train_u8 / 255.0, test_u8 / 255.0
    axes = (0, *range(2, train.ndim))
    mean, std = train.mean(axis=axes, keepdims=True), train.std(axis=axes, keepdims=True)
    return (train - mean) / std, (test - mean) / std


# --- MNIST IDX ----------------------------------------------------------------------------------


def test_read_idx_round_trip_plain_and_gz(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5) * 7
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        got = read_idx(tmp_path / name, ndim=3)
        assert got.dtype == np.uint8 and np.array_equal(got, array)


def test_mnist_reads_exact_values_plain_and_gz(tmp_path):
    arrays = make_mnist(tmp_path, np.random.default_rng(0), gz=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))
    raw = read_mnist(tmp_path)
    assert np.array_equal(raw["train_images"], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(raw["test_images"], arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(raw["test_labels"], arrays["t10k-labels-idx1-ubyte"])

    ds = load_dataset("mnist", seed=0, root=str(tmp_path))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train, test = expected_standardized(
        arrays["train-images-idx3-ubyte"][:, None], arrays["t10k-images-idx3-ubyte"][:, None]
    )
    assert np.allclose(ds.x_train.numpy(), train, atol=1e-5)
    assert np.allclose(ds.x_test.numpy(), test, atol=1e-5)


def test_mnist_prefers_the_uncompressed_file(tmp_path):
    arrays = make_mnist(tmp_path, np.random.default_rng(1))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(20, dtype=np.uint8))
    assert np.array_equal(read_mnist(tmp_path)["train_labels"], arrays["train-labels-idx1-ubyte"])


@pytest.mark.parametrize(
    "magic, match",
    [
        (struct.pack(">HBB", 0, 0x08, 2), "magic"),  # wrong number of dims
        (struct.pack(">HBB", 0, 0x0D, 3), "magic"),  # float type code
        (struct.pack(">HBB", 1, 0x08, 3), "magic"),  # leading bytes not zero
    ],
)
def test_mnist_bad_magic_names_the_file(tmp_path, magic, match):
    make_mnist(tmp_path, np.random.default_rng(0))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 28, 28)), magic=magic)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("mnist", seed=0, root=str(tmp_path))
    assert "train-images-idx3-ubyte" in str(err.value)


def test_mnist_truncated_and_oversized_files(tmp_path):
    make_mnist(tmp_path, np.random.default_rng(0))
    path = tmp_path / "t10k-images-idx3-ubyte"
    data = path.read_bytes()
    for broken in (data[:-1], data + b"\0", data[:10]):
        path.write_bytes(broken)
        with pytest.raises(ValueError, match="t10k-images-idx3-ubyte"):
            read_mnist(tmp_path)


def test_mnist_corrupted_gzip(tmp_path):
    make_mnist(tmp_path, np.random.default_rng(0), gz=("train-labels-idx1-ubyte",))
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        read_mnist(tmp_path)


def test_mnist_inconsistent_contents(tmp_path):
    make_mnist(tmp_path, np.random.default_rng(0))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8))
    with pytest.raises(ValueError, match="19 labels for 20 images"):
        read_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        read_mnist(tmp_path)
    make_mnist(tmp_path, np.random.default_rng(0))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 32, 32)))
    with pytest.raises(ValueError, match="28x28"):
        read_mnist(tmp_path)


def test_mnist_missing_files_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded") as err:
        load_dataset("mnist", seed=0, root=str(tmp_path / "nowhere"))
    assert "train-images-idx3-ubyte" in str(err.value)
    with pytest.raises(FileNotFoundError, match="root="):
        load_dataset("mnist", seed=0)
    make_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte.*never downloaded"):
        load_dataset("mnist", seed=0, root=str(tmp_path))


# --- CIFAR binary -------------------------------------------------------------------------------


def test_cifar10_reads_exact_values_from_folder_and_parent(tmp_path):
    x_train, y_train, x_test, y_test = make_cifar10(tmp_path / "cifar-10-batches-bin", np.random.default_rng(0))
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        raw = read_cifar("cifar10", root)
        assert np.array_equal(raw["train_images"], x_train) and np.array_equal(raw["train_labels"], y_train)
        assert np.array_equal(raw["test_images"], x_test) and np.array_equal(raw["test_labels"], y_test)

    ds = load_dataset("cifar10", seed=0, root=str(tmp_path))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    train, test = expected_standardized(x_train, x_test)
    assert np.allclose(ds.x_train.numpy(), train, atol=1e-5)
    assert np.allclose(ds.x_test.numpy(), test, atol=1e-5)


def test_cifar_channel_order_is_chw(tmp_path):
    # One record whose R, G and B planes hold 10, 20 and 30, and whose pixel (0, 1) is marked.
    image = np.stack([np.full((32, 32), v, dtype=np.uint8) for v in (10, 20, 30)])
    image[2, 0, 1] = 255
    folder = tmp_path / "cifar-10-batches-bin"
    make_cifar10(folder, np.random.default_rng(0))
    (folder / "test_batch.bin").write_bytes(cifar_records(image[None], [7]))
    raw = read_cifar("cifar10", tmp_path)
    assert raw["test_labels"].tolist() == [7]
    assert raw["test_images"][0, :, 5, 5].tolist() == [10, 20, 30] and raw["test_images"][0, 2, 0, 1] == 255


def test_cifar100_uses_fine_labels(tmp_path):
    x_train, fine_train, x_test, fine_test = make_cifar100(tmp_path / "cifar-100-binary", np.random.default_rng(0))
    ds = load_dataset("cifar100", seed=0, root=str(tmp_path))
    assert ds.num_classes == 100 and ds.input_shape == (3, 32, 32)
    assert ds.y_train.tolist() == fine_train.tolist() and ds.y_test.tolist() == fine_test.tolist()
    train, test = expected_standardized(x_train, x_test)
    assert np.allclose(ds.x_train.numpy(), train, atol=1e-5)
    assert np.allclose(ds.x_test.numpy(), test, atol=1e-5)
    same = load_dataset("cifar100", seed=0, root=str(tmp_path / "cifar-100-binary"))
    assert torch.equal(same.x_test, ds.x_test)


def test_cifar_truncated_or_bad_labels(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    make_cifar10(folder, np.random.default_rng(0))
    path = folder / "data_batch_3.bin"
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="data_batch_3.bin.*3073-byte"):
        load_dataset("cifar10", seed=0, root=str(tmp_path))
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="data_batch_3.bin"):
        load_dataset("cifar10", seed=0, root=str(tmp_path))
    path.write_bytes(bytes([10]) + good[1:])
    with pytest.raises(ValueError, match="data_batch_3.bin.*label 10"):
        load_dataset("cifar10", seed=0, root=str(tmp_path))

    make_cifar100(tmp_path / "c100", np.random.default_rng(0))
    records = bytearray((tmp_path / "c100" / "test.bin").read_bytes())
    records[1] = 100  # fine label of the first record
    (tmp_path / "c100" / "test.bin").write_bytes(bytes(records))
    with pytest.raises(ValueError, match="test.bin.*label 100"):
        load_dataset("cifar100", seed=0, root=str(tmp_path / "c100"))


def test_cifar_missing_files_and_pickle_version_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded") as err:
        load_dataset("cifar10", seed=0, root=str(tmp_path))
    assert "data_batch_1.bin" in str(err.value) and "test_batch.bin" in str(err.value)
    assert "pickle" not in str(err.value)

    # The python version (pickles) in the usual place: named as refused, never opened.
    pickled = tmp_path / "cifar-10-batches-py"
    pickled.mkdir()
    (pickled / "data_batch_1").write_bytes(b"not really a pickle")
    with pytest.raises(FileNotFoundError, match="pickle"):
        load_dataset("cifar10", seed=0, root=str(tmp_path))
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(FileNotFoundError, match="pickle.*train.bin|train.bin.*pickle"):
        load_dataset("cifar100", seed=0, root=str(tmp_path))

    folder = tmp_path / "cifar-10-batches-bin"
    make_cifar10(folder, np.random.default_rng(0))
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5.bin"):
        load_dataset("cifar10", seed=0, root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="root="):
        load_dataset("cifar100", seed=0)


def test_constant_channel_is_centred_not_divided(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    make_cifar10(folder, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    x[:, 1] = 51  # the green plane is constant over the whole train set
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(cifar_records(x, np.arange(4)))
    test_x = read_cifar("cifar10", folder)["test_images"]
    ds = load_dataset("cifar10", seed=0, root=str(folder))
    assert torch.isfinite(ds.x_train).all() and torch.all(ds.x_train[:, 1] == 0)
    assert np.allclose(ds.x_test[:, 1].numpy(), (test_x[:, 1] - 51.0) / 255.0, atol=1e-6)
    assert np.allclose(ds.x_train[:, 0].double().std(unbiased=False).item(), 1.0, atol=1e-5)

"""Tests of rayfl.data.datasets: the bundled MNIST, the torchvision path on real files, errors."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import shutil
import subprocess
import sys
import urllib.error

import numpy as np
import pytest

from rayfl.data import DATASETS, Dataset, load_bundled_mnist, load_dataset
from rayfl.data import datasets as datasets_module
from rayfl.errors import ConfigError, DataError

MNIST_DIR = pathlib.Path(datasets_module.__file__).parent / "mnist"
# md5 of the decompressed files, from rayfl/data/mnist/README.md
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_bundled_mnist()


@pytest.fixture(scope="module")
def raw_mnist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The four decompressed IDX files, keyed by their name without .gz."""
    return {
        name.removesuffix(".gz"): gzip.decompress((MNIST_DIR / name).read_bytes())
        for name in MNIST_MD5
    }


# --- bundled MNIST ---


def test_bundled_mnist_layout(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    assert mnist.x_train.dtype == np.uint8 and mnist.x_test.dtype == np.uint8
    assert mnist.y_train.dtype == np.int64 and mnist.y_test.dtype == np.int64
    assert mnist.x_train.flags.c_contiguous and mnist.x_test.flags.c_contiguous
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.num_classes == 10
    assert set(np.unique(mnist.y_train)) == set(range(10))
    assert set(np.unique(mnist.y_test)) == set(range(10))


def test_bundled_mnist_known_values(mnist: Dataset) -> None:
    # The first digits of the training and test sets, as in every MNIST tutorial.
    assert mnist.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    # Well-known class counts of the training set.
    assert np.bincount(mnist.y_train).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    # The first image, a 5: blank border, ink in the middle.
    assert mnist.x_train[0, 0, [0, 1, 2, 27], :].max() == 0
    assert mnist.x_train[0, 0, :, [0, 1, 27]].max() == 0
    assert mnist.x_train[0, 0, 14].max() > 200
    # The normalisation constants are the training pixels' statistics.
    pixels = mnist.x_train.reshape(-1)
    assert pixels.mean() / 255 == pytest.approx(mnist.mean[0], abs=1e-4)
    assert pixels.std() / 255 == pytest.approx(mnist.std[0], abs=1e-4)


def test_bundled_files_match_readme_md5(raw_mnist: dict[str, bytes]) -> None:
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5(raw_mnist[name.removesuffix(".gz")]).hexdigest() == md5, name


def test_bundled_mnist_is_cached_and_read_only(mnist: Dataset) -> None:
    assert load_dataset("mnist") is mnist  # data_dir=None means the bundled copy
    assert load_bundled_mnist() is mnist
    for array in (mnist.x_train, mnist.y_train, mnist.x_test, mnist.y_test):
        assert not array.flags.writeable
    with pytest.raises(ValueError):
        mnist.y_train[0] = 3


def _redirect_bundled(monkeypatch: pytest.MonkeyPatch, name: str, path: pathlib.Path) -> None:
    """Makes the loader read ``path`` in place of the bundled file ``name``."""
    real = datasets_module._bundled_file
    monkeypatch.setattr(datasets_module, "_bundled_file", lambda f: path if f == name else real(f))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("train-labels-idx1-ubyte.gz", "truncated_gzip"),
        ("train-labels-idx1-ubyte.gz", "short_payload"),
        ("t10k-images-idx3-ubyte.gz", "wrong_magic"),
        ("t10k-images-idx3-ubyte.gz", "missing"),
        ("train-images-idx3-ubyte.gz", "not_gzip"),
    ],
)
def test_corrupted_bundled_file_raises(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    raw_mnist: dict[str, bytes],
    name: str,
    damage: str,
) -> None:
    bad = tmp_path / name
    raw = raw_mnist[name.removesuffix(".gz")]
    if damage == "truncated_gzip":
        packed = (MNIST_DIR / name).read_bytes()
        bad.write_bytes(packed[: len(packed) // 2])
    elif damage == "short_payload":
        bad.write_bytes(gzip.compress(raw[:-100], compresslevel=1))
    elif damage == "wrong_magic":
        bad.write_bytes(gzip.compress((2049).to_bytes(4, "big") + raw[4:], compresslevel=1))
    elif damage == "not_gzip":
        bad.write_bytes(raw[:1000])
    _redirect_bundled(monkeypatch, name, bad)
    with pytest.raises(DataError, match="reinstall rayfl") as info:
        load_bundled_mnist()
    assert name in str(info.value)
    assert "\n" not in str(info.value)


def test_intact_copy_of_a_bundled_file_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, mnist: Dataset
) -> None:
    # Guards the corruption test: the redirect itself does not break a good file.
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(MNIST_DIR / name, tmp_path / name)
    _redirect_bundled(monkeypatch, name, tmp_path / name)
    assert np.array_equal(load_bundled_mnist().y_test, mnist.y_test)


# --- torchvision path, on real files ---


def _write_raw(folder: pathlib.Path, raw_mnist: dict[str, bytes], prefix: str = "") -> None:
    """Writes the decompressed files where torchvision looks (``<root>/<Class>/raw/``).

    MNIST and Fashion-MNIST read ``train-images-idx3-ubyte`` etc.; EMNIST reads
    ``emnist-<split>-train-images-idx3-ubyte`` and ``...-test-...`` (``prefix`` set).
    """
    folder.mkdir(parents=True)
    for name, data in raw_mnist.items():
        target = prefix + name.replace("t10k", "test") if prefix else name
        (folder / target).write_bytes(data)


def test_torchvision_mnist_equals_bundled(
    tmp_path: pathlib.Path, raw_mnist: dict[str, bytes], mnist: Dataset
) -> None:
    _write_raw(tmp_path / "MNIST" / "raw", raw_mnist)
    for data_dir in (tmp_path, str(tmp_path)):
        ds = load_dataset("mnist", data_dir=data_dir)
        assert ds is not mnist
        for field in ("x_train", "y_train", "x_test", "y_test"):
            got, want = getattr(ds, field), getattr(mnist, field)
            assert got.dtype == want.dtype and got.flags.c_contiguous, field
            assert np.array_equal(got, want), field
        assert (ds.num_classes, ds.mean, ds.std) == (10, mnist.mean, mnist.std)


def test_torchvision_emnist_is_transposed_upright(
    tmp_path: pathlib.Path, raw_mnist: dict[str, bytes], mnist: Dataset
) -> None:
    # EMNIST files store each image transposed; feed MNIST bytes under EMNIST names and the
    # loader must return them transposed (H <-> W).
    _write_raw(tmp_path / "EMNIST" / "raw", raw_mnist, prefix="emnist-balanced-")
    ds = load_dataset("emnist-balanced", data_dir=tmp_path)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_train.flags.c_contiguous
    assert np.array_equal(ds.x_train, mnist.x_train.transpose(0, 1, 3, 2))
    assert np.array_equal(ds.y_test, mnist.y_test)
    assert ds.num_classes == 47
    assert ds.mean == pytest.approx((0.1751,), abs=1e-4)


class _FakeCifar:
    """Stands in for torchvision.datasets.CIFAR10: (N, H, W, C) uint8 data, list targets."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        n = 5 if train else 3
        rng = np.random.default_rng([0, int(train)])
        self.data = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        self.targets = list(range(n))


def test_torchvision_cifar_is_channels_first(monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")
    monkeypatch.setattr(torchvision_datasets, "CIFAR10", _FakeCifar)
    ds = load_dataset("cifar10", data_dir="/nonexistent")
    fake = _FakeCifar("", train=True, download=False)
    assert ds.x_train.shape == (5, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32)
    assert ds.x_train.flags.c_contiguous
    assert ds.x_train[2, 1, 7, 9] == fake.data[2, 7, 9, 1]  # (N, C, H, W) <- (N, H, W, C)
    assert np.array_equal(ds.x_train, fake.data.transpose(0, 3, 1, 2))
    assert ds.y_train.dtype == np.int64 and ds.y_train.tolist() == [0, 1, 2, 3, 4]
    assert ds.mean == (0.4914, 0.4822, 0.4465) and len(ds.std) == 3


# --- errors ---


def test_missing_data_without_download(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DataError, match="data.download") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "not found" in message and str(tmp_path) in message and "\n" not in message


def test_failed_download(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    torchvision_datasets = pytest.importorskip("torchvision.datasets")

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download
            raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision_datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="could not download 'cifar10'") as info:
        load_dataset("cifar10", data_dir=tmp_path, download=True)
    message = str(info.value)
    assert "name resolution" in message and "data.data_dir" in message and "\n" not in message


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="unknown data set 'svhn'") as info:
        load_dataset("svhn")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "mnist"])
def test_only_mnist_is_bundled(name: str) -> None:
    with pytest.raises(DataError, match="not bundled: set data.data_dir"):
        load_dataset(name)


def test_data_modules_import_no_torch_or_ray() -> None:
    code = (
        "import sys, rayfl.data; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'ray')); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- a user's data set, by import path ---

USER_LOADERS = """
import numpy as np
from rayfl.data import Dataset

def blobs(n: int = 40, side: int = 4):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(n, 1, side, side), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % 2
    return Dataset("blobs", x, y, x[:10], y[:10], 2, (0.5,), (0.25,))

def not_a_dataset():
    return {"x": 1}
"""


def test_user_dataset_by_import_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_data.py").write_text(USER_LOADERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset("user_data:blobs", params={"n": 20, "side": 6})
    assert ds.name == "blobs" and ds.x_train.shape == (20, 1, 6, 6) and ds.num_classes == 2
    with pytest.raises(DataError, match="data.dataset='user_data:not_a_dataset' returned dict"):
        load_dataset("user_data:not_a_dataset")
    with pytest.raises(ConfigError, match="data.dataset_params.sides is not a parameter"):
        load_dataset("user_data:blobs", params={"sides": 6})


# --- what a Dataset may hold ---


def test_a_user_set_may_hold_any_numeric_samples_and_targets() -> None:
    # float features and regression targets, for a client task with its own batch transform
    x = np.zeros((10, 8), dtype=np.float32)
    y = np.linspace(0, 1, 10, dtype=np.float32)
    ds = Dataset("features", x, y, x[:4], y[:4], 1, (), ())
    assert ds.input_shape == (8,)
    targets = np.zeros((10, 3))  # several targets per sample
    assert Dataset("multi", x, targets, x[:2], targets[:2], 3, (), ()).input_shape == (8,)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        (np.array([["a"]] * 4), np.zeros(4), "samples (4, 1) <U1"),
        (np.zeros((4, 2)), np.zeros(3), "targets (3,)"),
        ([[0.0, 1.0]] * 4, np.zeros(4), "samples ? list"),
    ],
)
def test_a_user_set_must_be_numeric_with_one_target_row_per_sample(x, y, expected) -> None:
    with pytest.raises(DataError, match="malformed train split") as info:
        Dataset("odd", x, y, np.zeros((2, 2)), np.zeros(2), 1, (), ())
    assert expected in str(info.value) and "one target row per sample" in str(info.value)


def test_images_keep_the_image_checks() -> None:
    x = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    # a shipped name with anything but uint8 (N, C, H, W) images is a broken download
    with pytest.raises(DataError, match="delete the files under data.data_dir"):
        Dataset(
            "mnist", x.astype(np.float32), np.zeros(4, np.int64), x, np.zeros(4), 10, (0.1,), (0.3,)
        )
    # uint8 (N, C, H, W) samples are images, whoever loads them: one mean and std per channel
    with pytest.raises(DataError, match="1 channels but 3 means"):
        Dataset("user", x, np.zeros(4), x, np.zeros(4), 2, (0.1,) * 3, (0.3,) * 3)
    with pytest.raises(DataError, match="train samples of shape"):
        Dataset("user", np.zeros((4, 3)), np.zeros(4), np.zeros((4, 2)), np.zeros(4), 1, (), ())

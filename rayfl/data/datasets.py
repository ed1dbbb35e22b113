"""Image classification data sets as plain uint8 numpy arrays (and a user's own data sets).

The default, :func:`load_bundled_mnist`, reads the MNIST digits (LeCun, Cortes and Burges) that
ship inside the package, offline and with numpy only: it is the data set of the AKAFL-RJ paper's
experiment (spec ``specs/akafl-rj.md`` section 7: 60,000 training images to partition, 10,000
test images for accuracy). The other sets (EMNIST, Cohen et al. 2017; Fashion-MNIST, Xiao et al.
2017; CIFAR-10, Krizhevsky 2009) come through ``torchvision.datasets`` from ``data.data_dir``,
and torchvision is imported only inside those loaders, so this module imports no torch and no ray.

Every shipped set is returned in one layout, whatever its source: images ``(N, C, H, W)`` uint8
on the 0-255 scale, labels ``(N,)`` int64, plus the per-channel mean and std (on the [0, 1] scale)
that the client task uses to normalise. All arrays are read-only, because the bundled arrays are
cached and shared between calls (and Ray's object store hands out read-only arrays anyway). A
user's loader may return other numeric samples and targets for a client task that transforms its
batches itself (:class:`Dataset`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from rayfl.errors import DataError
from rayfl.registry import check_params, is_import_path, resolve

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DATASETS: tuple[str, ...] = (
    "mnist",
    "emnist-mnist",
    "emnist-digits",
    "emnist-balanced",
    "fashion-mnist",
    "cifar10",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test set of samples and targets; ``eq=False`` because arrays have no single truth
    value.

    The shipped sets are labelled images: ``x`` (N, C, H, W) uint8, ``y`` (N,) int64 labels, with a
    per-channel ``mean`` and ``std``. A user's loader (``data.dataset: package.module:loader``) may
    return any numeric ``x`` (N, ...) and ``y`` (N, ...) (float features and regression targets,
    say) when its client task (``client.task``) transforms the batches itself; ``mean`` and
    ``std`` are then whatever that task wants (may be empty). uint8 (N, C, H, W) samples are
    checked as images, whoever loads them.
    """

    name: str  # one of DATASETS, or a user loader's own name
    x_train: np.ndarray  # (N, ...) samples; images: (N, C, H, W) uint8, C-contiguous, read-only
    y_train: np.ndarray  # (N, ...) targets; images: (N,) int64 labels in [0, num_classes)
    x_test: np.ndarray  # (M, ...) samples, each shaped like x_train's
    y_test: np.ndarray  # (M, ...) targets
    num_classes: int  # 10, or 47 for emnist-balanced: the model's output width
    mean: tuple[float, ...]  # (C,) per-channel mean of the training pixels, [0, 1] scale
    std: tuple[float, ...]  # (C,) per-channel std of the training pixels, [0, 1] scale
    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    """Per-training-sample columns besides the labels, for partitioners (e.g. an ``hf:`` set's
    ``writer_id`` for ``flwr:NaturalIdPartitioner``); (N,) each."""

    def __post_init__(self) -> None:
        first = self.x_train
        images = self.name in DATASETS or (
            _numeric(first) and first.ndim == 4 and first.dtype == np.uint8
        )
        for x, y, split in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if images:
                if x.ndim != 4 or x.dtype != np.uint8 or y.shape != (x.shape[0],):
                    raise DataError(
                        f"data set '{self.name}' has a malformed {split} split "
                        f"(images {x.shape} {x.dtype}, labels {y.shape}): delete the files "
                        "under data.data_dir and download them again"
                    )
            elif not (_numeric(x) and _numeric(y) and x.ndim >= 1 and y.shape[:1] == x.shape[:1]):
                raise DataError(
                    f"data set '{self.name}' has a malformed {split} split (samples "
                    f"{getattr(x, 'shape', '?')} {getattr(x, 'dtype', type(x).__name__)}, "
                    f"targets {getattr(y, 'shape', '?')}): return numeric numpy arrays, one "
                    "target row per sample"
                )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DataError(
                f"data set '{self.name}' has train samples of shape {self.x_train.shape[1:]} "
                f"but test samples of shape {self.x_test.shape[1:]}: make them alike"
            )
        if images and (
            len(self.mean) != self.x_train.shape[1] or len(self.std) != self.x_train.shape[1]
        ):
            raise DataError(
                f"data set '{self.name}' has {self.x_train.shape[1]} channels but "
                f"{len(self.mean)} means and {len(self.std)} stds: fix its constants in rayfl.data"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, e.g. ``(1, 28, 28)`` for MNIST, ``(8,)`` for 8 features."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def _numeric(a: Any) -> bool:
    """A numpy array of numbers or booleans (what torch can take)."""
    return isinstance(a, np.ndarray) and (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_)


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How to get one named data set from torchvision and what its constants are."""

    torchvision_class: str  # attribute of torchvision.datasets
    kwargs: tuple[tuple[str, Any], ...]  # extra constructor arguments, e.g. the EMNIST split
    num_classes: int
    mean: tuple[float, ...]  # per channel, [0, 1] scale
    std: tuple[float, ...]  # per channel, [0, 1] scale
    transpose_hw: bool = False  # EMNIST stores every image transposed


_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
_EMNIST_MEAN, _EMNIST_STD = (0.1751,), (0.3332,)

_SPECS: dict[str, _Spec] = {
    "mnist": _Spec("MNIST", (), 10, _MNIST_MEAN, _MNIST_STD),
    "emnist-mnist": _Spec("EMNIST", (("split", "mnist"),), 10, _EMNIST_MEAN, _EMNIST_STD, True),
    "emnist-digits": _Spec("EMNIST", (("split", "digits"),), 10, _EMNIST_MEAN, _EMNIST_STD, True),
    "emnist-balanced": _Spec(
        "EMNIST", (("split", "balanced"),), 47, _EMNIST_MEAN, _EMNIST_STD, True
    ),
    "fashion-mnist": _Spec("FashionMNIST", (), 10, (0.2860,), (0.3530,)),
    "cifar10": _Spec("CIFAR10", (), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# The bundled IDX files: (file name, magic number, header bytes, expected record count).
_MNIST_FILES: dict[str, tuple[str, int, int, int]] = {
    "x_train": ("train-images-idx3-ubyte.gz", 2051, 16, 60_000),
    "y_train": ("train-labels-idx1-ubyte.gz", 2049, 8, 60_000),
    "x_test": ("t10k-images-idx3-ubyte.gz", 2051, 16, 10_000),
    "y_test": ("t10k-labels-idx1-ubyte.gz", 2049, 8, 10_000),
}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    params: Mapping[str, Any] | None = None,
) -> Dataset:
    """Loads a data set by name.

    Args:
        name: One of :data:`DATASETS`, or an import path ``package.module:function`` to a user's
            loader ``function(**params) -> Dataset``.
        data_dir: Folder that torchvision reads (and downloads into). ``None`` means the bundled
            MNIST, the only set that needs no folder; with a folder, every set, ``mnist``
            included, comes through torchvision.
        download: Let torchvision fetch a missing set into ``data_dir``.
        params: keyword arguments of a user loader (``data.dataset_params``).

    Returns:
        The set as uint8 ``(N, C, H, W)`` images and int64 labels.

    Raises:
        DataError: The name is unknown, the set is not bundled and no folder was given, the
            folder lacks it and ``download`` is off, or the download failed.

    Example:
        >>> ds = load_dataset("mnist")
        >>> ds.x_train.shape, ds.input_shape
        ((60000, 1, 28, 28), (1, 28, 28))
    """
    if name not in _SPECS:
        if name.startswith("hf:"):
            return _load_hf_dataset(name, data_dir, params)
        if is_import_path(name):
            return _load_user_dataset(name, params)
        raise DataError(
            f"unknown data set '{name}' (data.dataset): use one of {', '.join(DATASETS)} or an "
            "import path 'package.module:loader'"
        )
    if data_dir is None:
        if name == "mnist":
            return load_bundled_mnist()
        raise DataError(
            f"data set '{name}' is not bundled: set data.data_dir "
            "(and data.download=true to fetch it)"
        )
    return _load_torchvision(name, os.fspath(data_dir), download)


def _load_hf_dataset(name: str, data_dir: Any, params: Mapping[str, Any] | None) -> Dataset:
    """A Hugging Face set (:mod:`rayfl.data.hub`), its parameters checked like a loader's."""
    from rayfl.data.hub import load_hf  # the datasets library: an optional extra

    kwargs = check_params("data.dataset_params", load_hf, params, engine_args=2)
    fields, kept = load_hf(name, None if data_dir is None else os.fspath(data_dir), **kwargs)
    return Dataset(**fields, columns=kept)


def _load_user_dataset(name: str, params: Mapping[str, Any] | None) -> Dataset:
    """A user's loader, named by import path; it must return a :class:`Dataset`."""
    loader = resolve("data.dataset", name, {}, "data set loader")
    ds = loader(**check_params("data.dataset_params", loader, params))
    if not isinstance(ds, Dataset):
        raise DataError(
            f"data.dataset={name!r} returned {type(ds).__name__}, not a rayfl.data.Dataset: "
            "build one with Dataset(name, x_train, y_train, x_test, y_test, num_classes, mean, std)"
        )
    return ds


def load_bundled_mnist() -> Dataset:
    """The MNIST digits shipped inside the package, decoded with numpy (no network, no torch).

    The decoded arrays are cached in-process, so repeated calls are cheap and share memory.

    Raises:
        DataError: A bundled file is missing, truncated or not an IDX file of the right kind.
    """
    files = tuple(_bundled_file(spec[0]) for spec in _MNIST_FILES.values())
    return _decode_mnist(files)


def _bundled_file(filename: str) -> Traversable:
    """Location of one bundled MNIST file (a small function so tests can point it elsewhere)."""
    return importlib.resources.files("rayfl.data") / "mnist" / filename


@functools.lru_cache(maxsize=2)
def _decode_mnist(files: tuple[Traversable, ...]) -> Dataset:
    """Decodes the four IDX files given in ``_MNIST_FILES`` order; cached per file tuple."""
    arrays = {
        key: _read_idx(path, magic, header, count)
        for (key, (_, magic, header, count)), path in zip(_MNIST_FILES.items(), files, strict=True)
    }
    return Dataset(
        name="mnist",
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=10,
        mean=_MNIST_MEAN,
        std=_MNIST_STD,
    )


def _read_idx(path: Traversable, magic: int, header: int, count: int) -> np.ndarray:
    """Reads one gzipped big-endian IDX file of uint8 records.

    Returns ``(count, 1, 28, 28)`` uint8 for images (magic 2051) or ``(count,)`` int64 for
    labels (magic 2049), both read-only.
    """
    try:
        with path.open("rb") as f:
            raw = gzip.decompress(f.read())
    except (OSError, EOFError) as exc:  # missing file, bad gzip stream, truncated stream
        raise _corrupted(path, exc) from exc
    # header: magic, count (and rows, cols for images) as big-endian uint32
    dims = np.frombuffer(raw, ">u4", count=header // 4) if len(raw) >= header else np.zeros(0)
    want = (magic, count, 28, 28) if magic == 2051 else (magic, count)
    record = 28 * 28 if magic == 2051 else 1  # bytes per record
    if tuple(int(d) for d in dims) != want or len(raw) != header + count * record:
        raise _corrupted(path, ValueError(f"header {dims.tolist()}, {len(raw)} bytes"))
    data = np.frombuffer(raw, np.uint8, offset=header)  # read-only view of the bytes
    if magic == 2051:
        return data.reshape(count, 1, 28, 28)
    labels = data.astype(np.int64)
    labels.flags.writeable = False
    return labels


def _corrupted(path: Traversable, exc: BaseException) -> DataError:
    return DataError(
        f"bundled MNIST file {path.name} is corrupted or truncated ({type(exc).__name__}): "
        "reinstall rayfl"
    )


def _load_torchvision(name: str, data_dir: str, download: bool) -> Dataset:
    """Loads ``name`` through torchvision from ``data_dir`` and converts it to numpy."""
    from torchvision import datasets as tv_datasets  # lazy: keeps torch out of module import

    spec = _SPECS[name]
    cls = getattr(tv_datasets, spec.torchvision_class)
    kwargs = dict(spec.kwargs)
    splits = []
    for train in (True, False):
        try:
            splits.append(cls(root=data_dir, train=train, download=download, **kwargs))
        except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
            raise _torchvision_error(name, data_dir, download, exc) from exc
    (x_train, y_train), (x_test, y_test) = (_to_numpy(s, spec.transpose_hw) for s in splits)
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
    )


def _to_numpy(split: Any, transpose_hw: bool) -> tuple[np.ndarray, np.ndarray]:
    """Converts a torchvision data set to read-only ``(N, C, H, W)`` uint8 and ``(N,)`` int64."""
    data = split.data
    x = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.uint8)
    if x.ndim == 3:  # (N, H, W) grey images: MNIST, EMNIST, Fashion-MNIST
        if transpose_hw:
            x = x.transpose(0, 2, 1)  # EMNIST stores images transposed; make them upright
        x = x[:, None, :, :]
    else:  # (N, H, W, C) colour images: CIFAR-10
        x = x.transpose(0, 3, 1, 2)
    targets = split.targets
    y = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets, dtype=np.int64)
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _torchvision_error(name: str, data_dir: str, download: bool, exc: Exception) -> DataError:
    """One actionable line for whatever torchvision raised."""
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
    if len(reason) > 160:
        reason = reason[:157] + "..."
    if download:
        return DataError(
            f"could not download '{name}' into data.data_dir={data_dir}: {reason}; "
            "download it on a machine with internet and set data.data_dir"
        )
    if isinstance(exc, RuntimeError) and "not found" in str(exc).lower():
        return DataError(
            f"data set '{name}' not found under data.data_dir={data_dir}: set data.download=true "
            "or point data.data_dir at a folder holding it"
        )
    return DataError(
        f"could not read '{name}' under data.data_dir={data_dir}: {reason}; delete its files "
        "and set data.download=true, or point data.data_dir at a good copy"
    )

"""Hugging Face data sets as rayfl data sets: ``data.dataset: hf:<name or folder>``.

``hf:ylecun/mnist`` loads that set from the Hugging Face hub (``datasets.load_dataset``, cached in
``data.data_dir`` if given, else the ``datasets`` cache); ``hf:/path/to/folder`` loads one saved with
``DatasetDict.save_to_disk`` (no network). The image and label columns, the splits and the columns
kept for partitioners (e.g. a writer id for ``flwr:NaturalIdPartitioner``) are
``data.dataset_params``:

    data:
      dataset: hf:flwrlabs/femnist
      dataset_params: {image_column: image, label_column: character, keep_columns: [writer_id]}

A text set names its ``text_column`` instead (each text its UTF-8 bytes, cut or zero-padded to
``max_length``: uint8 (N, max_length), for a client task that tokenises in its ``batch``).
The images become rayfl's compact uint8 (N, C, H, W) arrays (one copy per node in Ray's object
store, whatever the number of clients), with the per-channel mean and std of the training pixels.
Needs ``pip install 'rayfl[hf]'`` (the ``datasets`` library and Pillow).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayfl.errors import DataError

PREFIX = "hf:"
FIELD = "data.dataset_params"


def is_hf(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def load_hf(
    name: str,
    data_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    keep_columns: Sequence[str] = (),
    revision: str | None = None,
    text_column: str | None = None,
    max_length: int = 256,
) -> tuple[Any, dict[str, np.ndarray]]:
    """The set as the fields of a :class:`~rayfl.data.Dataset`, and the kept training columns.

    With ``text_column`` (instead of images) each sample is its text's UTF-8 bytes, cut or
    zero-padded to ``max_length``: uint8 (N, max_length) arrays, one copy per node like images,
    for a client task whose ``batch`` tokenises them (``bytes(row).rstrip(b"\0").decode()``).

    Returns:
        (dict of Dataset fields, {column: (n_train,) array}).

    Raises:
        DataError: the library is missing, the set or a split or column does not exist, the
            images are not images.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.dataset={name!r} needs the Hugging Face datasets library: pip install 'rayfl[hf]'"
        ) from None
    splits = _open(datasets, name[len(PREFIX) :], data_dir, revision)
    for param, split in (("train_split", train_split), ("test_split", test_split)):
        if split not in splits:
            raise DataError(
                f"{FIELD}.{param}={split!r}: {name} has no such split (it has "
                f"{', '.join(splits)}): name one of them"
            )
    train, test = splits[train_split], splits[test_split]
    sample = ("text_column", text_column) if text_column else ("image_column", image_column)
    _check_columns(train, name, [sample, ("label_column", label_column)] + [
        ("keep_columns", c) for c in keep_columns
    ])  # fmt: skip
    if text_column:
        x_train, y_train = _texts(train, text_column, label_column, max_length)
        x_test, y_test = _texts(test, text_column, label_column, max_length)
        mean, std = (), ()
    else:
        x_train, y_train = _images(train, image_column, label_column, name)
        x_test, y_test = _images(test, image_column, label_column, name)
        mean, std = _channel_stats(x_train)
    fields = dict(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    fields.update(
        num_classes=_num_classes(train, label_column, y_train, y_test), mean=mean, std=std
    )
    kept = {c: np.asarray(train.with_format("numpy")[c]) for c in keep_columns}
    return fields, kept


def _check_columns(split: Any, name: str, wanted: list[tuple[str, str | None]]) -> None:
    """Each (param, column) the config names exists in the split; else one line naming it."""
    for param, column in wanted:
        if column not in split.column_names:
            raise DataError(
                f"{FIELD}.{param}={column!r}: {name} has no such column (it has "
                f"{', '.join(split.column_names)}): name one of them"
            )


def _open(datasets: Any, source: str, data_dir: str | None, revision: str | None) -> Any:
    """The set's splits, from a local folder (``save_to_disk``) or the hub."""
    try:
        if Path(source).expanduser().exists():
            out = datasets.load_from_disk(str(Path(source).expanduser()))
        else:
            out = datasets.load_dataset(source, cache_dir=data_dir, revision=revision)
    except Exception as e:  # noqa: BLE001 - the library's own message says what went wrong
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"data.dataset='hf:{source}' cannot be loaded ({type(e).__name__}: {message}): check "
            "the name (hub) or the folder (saved with save_to_disk)"
        ) from None
    if not isinstance(out, datasets.DatasetDict):
        raise DataError(
            f"data.dataset='hf:{source}' is a single split: save a DatasetDict with train and "
            "test splits"
        )
    return out


def _images(
    split: Any, image_column: str, label_column: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, C, H, W) images and int64 labels of a split."""
    rows = split.with_format("numpy")
    images = np.asarray(rows[image_column])
    if images.dtype == object or images.ndim not in (3, 4):
        raise DataError(
            f"{FIELD}.image_column={image_column!r} of {name} does not hold images of one size "
            f"(got {images.dtype} {images.shape}): name the image column"
        )
    # grayscale (n, H, W): one channel; colour (n, H, W, C): channels first
    images = images[:, None, :, :] if images.ndim == 3 else np.transpose(images, (0, 3, 1, 2))
    x = np.ascontiguousarray(images, dtype=np.uint8)
    y = np.asarray(rows[label_column]).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _texts(
    split: Any, text_column: str, label_column: str, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, length) UTF-8 bytes (cut or zero-padded) and int64 labels of a split."""
    if length < 1:
        raise DataError(f"{FIELD}.max_length={length} must be >= 1: use e.g. 256")
    texts = split[text_column]
    x = np.zeros((len(texts), length), dtype=np.uint8)
    for i, text in enumerate(texts):
        raw = str(text).encode("utf-8")[:length]
        x[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    y = np.asarray(split.with_format("numpy")[label_column]).astype(np.int64)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _num_classes(split: Any, label_column: str, *labels: np.ndarray) -> int:
    feature = split.features[label_column]
    names = getattr(feature, "names", None)
    return len(names) if names else int(max(int(y.max()) for y in labels if y.size) + 1)


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the pixels on the [0, 1] scale (in chunks: a big set is fine)."""
    c = x.shape[1]
    total = np.zeros(c)
    square = np.zeros(c)
    for start in range(0, x.shape[0], 4096):
        block = x[start : start + 4096].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        square += (block * block).sum(axis=(0, 2, 3))
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(square / n - mean * mean, 1e-12))
    return tuple(map(float, mean)), tuple(map(float, std))

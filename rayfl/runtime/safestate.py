"""Checkpoint state without pickle: a JSON tree beside an ``.npz`` of its arrays.

A checkpoint holds the engine's whole state: numbers, arrays (the model, the held versions), and
the states of the rules, the server optimizer, the control rules, the selector and the clients'
tasks, which are user code's own NamedTuples, dataclasses, tuples, dicts and arrays. Pickle would
store them all, and ``pickle.load`` of a file from a run folder or a storage bucket runs whatever
code the file names. Here:

- :func:`encode` turns a state tree into JSON-able data: ``None``, bools, ints, strs as
  themselves; floats as themselves or tagged (NaN, inf); numpy scalars tagged with their dtype
  (a float32 stays a float32: resume is bit-identical); arrays as references into the ``.npz``
  (numeric dtypes only); tuples, lists and dicts (any JSON-able keys, e.g. int versions) tagged;
  a NamedTuple or dataclass as its class *name* and its fields. Anything else is refused with
  the path to it.
- :func:`decode` reads that back with nothing but data: a NamedTuple or dataclass comes back as a
  :class:`Record` (name and fields); no class is looked up, no module imported.
- :func:`conform` gives a decoded state its classes back from a *template* the running code
  builds (``rule.init(w)``, ``selector.init(n)``, ...): a :class:`Record` becomes the template's
  class where the names agree, and a state whose shape disagrees with the code's is a one-line
  error, not a silent mix.

Arrays are read with ``numpy.load(allow_pickle=False)``, which refuses object arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT = 1
_NUMPY_SCALARS = (np.bool_, np.integer, np.floating)


class UnsafeState(TypeError):
    """A value that cannot be stored without pickle; the message names where it is."""


@dataclasses.dataclass(frozen=True)
class Record:
    """A NamedTuple or dataclass read from a checkpoint: its class name and fields, in order."""

    name: str
    fields: dict[str, Any]


def encode(tree: Any, arrays: dict[str, np.ndarray], path: str = "state") -> Any:
    """``tree`` as JSON-able data; its arrays go into ``arrays`` (named by their path)."""
    if tree is None or isinstance(tree, (bool, str)):
        return tree
    if isinstance(tree, int) and not isinstance(tree, bool):
        return tree
    if isinstance(tree, float):
        return tree if math.isfinite(tree) else {"float": repr(tree)}
    if isinstance(tree, _NUMPY_SCALARS):
        return {
            "scalar": tree.dtype.str,
            "value": tree.item() if math.isfinite(float(tree)) else repr(float(tree)),
        }
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "biuf":
            raise UnsafeState(
                f"{path}: an array of dtype {tree.dtype} cannot be stored (numbers only)"
            )
        key = f"a{len(arrays)}"
        arrays[key] = tree
        return {"array": key}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return _record(type(tree).__name__, tree._asdict(), arrays, path)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}
        return _record(type(tree).__name__, fields, arrays, path)
    if isinstance(tree, (tuple, list)):
        items = [encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(tree)]
        return {"tuple": items} if isinstance(tree, tuple) else {"list": items}
    if isinstance(tree, Mapping):
        return {
            "dict": [
                [encode(k, arrays, f"{path} key"), encode(v, arrays, f"{path}[{k!r}]")]
                for k, v in tree.items()
            ]
        }
    raise UnsafeState(
        f"{path}: a {type(tree).__name__} cannot be stored in a checkpoint without pickle: keep "
        "numbers, strings, numpy arrays, tuples, lists, dicts, NamedTuples and dataclasses in a state"
    )


def _record(name: str, fields: Mapping[str, Any], arrays: dict[str, np.ndarray], path: str) -> Any:
    return {
        "record": name,
        "fields": {k: encode(v, arrays, f"{path}.{k}") for k, v in fields.items()},
    }


def decode(data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """What :func:`encode` made, back as data (NamedTuples and dataclasses as :class:`Record`)."""
    if not isinstance(data, (dict, list)):
        return data
    if isinstance(data, list):  # only inside tagged containers
        return [decode(v, arrays) for v in data]
    if "float" in data:
        return float(data["float"])
    if "scalar" in data:
        value = data["value"]
        return np.dtype(data["scalar"]).type(float(value) if isinstance(value, str) else value)
    if "array" in data:
        return arrays[data["array"]]
    if "tuple" in data:
        return tuple(decode(v, arrays) for v in data["tuple"])
    if "list" in data:
        return [decode(v, arrays) for v in data["list"]]
    if "dict" in data:
        return {_key(decode(k, arrays)): decode(v, arrays) for k, v in data["dict"]}
    if "record" in data:
        return Record(
            str(data["record"]), {k: decode(v, arrays) for k, v in data["fields"].items()}
        )
    raise ValueError(f"unknown node {sorted(data)}")


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def conform(value: Any, template: Any, where: str) -> Any:
    """``value`` (decoded) with the classes of ``template`` (what the running code's ``init``
    returns): each :class:`Record` becomes the template's NamedTuple or dataclass there.

    Raises:
        UnsafeState: a Record whose class the template does not have at that place (the state
            was written by other code), naming ``where``.
    """
    if isinstance(value, Record):
        cls = type(template)
        if template is None or cls.__name__ != value.name or not _is_record_class(template):
            raise UnsafeState(
                f"{where}: the checkpoint holds a {value.name}, the code's state a "
                f"{cls.__name__}: resume with the code and config that wrote the run"
            )
        fields = {
            k: conform(v, getattr(template, k, None), f"{where}.{k}")
            for k, v in value.fields.items()
        }
        return cls(**fields)
    if isinstance(value, tuple) and isinstance(template, tuple) and len(value) == len(template):
        return tuple(
            conform(v, t, f"{where}[{i}]")
            for i, (v, t) in enumerate(zip(value, template, strict=True))
        )
    if isinstance(value, list) and isinstance(template, list) and len(value) == len(template):
        return [
            conform(v, t, f"{where}[{i}]")
            for i, (v, t) in enumerate(zip(value, template, strict=True))
        ]
    if isinstance(value, dict) and isinstance(template, Mapping):
        return {k: conform(v, template.get(k), f"{where}[{k!r}]") for k, v in value.items()}
    if _holds_records(value):
        raise UnsafeState(
            f"{where}: the checkpoint's state has another shape than the code's: resume with the "
            "code and config that wrote the run"
        )
    return value


def _is_record_class(template: Any) -> bool:
    return (isinstance(template, tuple) and hasattr(template, "_fields")) or (
        dataclasses.is_dataclass(template) and not isinstance(template, type)
    )


def _holds_records(value: Any) -> bool:
    if isinstance(value, Record):
        return True
    if isinstance(value, (tuple, list)):
        return any(_holds_records(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_records(v) for v in value.values())
    return False

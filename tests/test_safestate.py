"""Checkpoint states without pickle: encode to JSON + arrays, decode with data only, and get the
classes back from the running code's template."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import NamedTuple

import numpy as np
import pytest

from rayfl.runtime.safestate import Record, UnsafeState, conform, decode, encode


class Momentum(NamedTuple):
    previous: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Judge:
    ewma: float
    active: bool
    seen: tuple[int, ...]


def roundtrip(tree):
    arrays: dict[str, np.ndarray] = {}
    data = json.loads(json.dumps(encode(tree, arrays)))  # really through JSON text
    return decode(data, {k: v.copy() for k, v in arrays.items()})


def test_every_kind_of_leaf_and_container_comes_back_exactly():
    tree = {
        "t": 7, "lr": 0.05, "nan": math.nan, "inf": -math.inf, "name": "x", "none": None,
        "f32": np.float32(0.1), "i64": np.int64(3), "flag": np.bool_(True), "ok": True,
        "w": np.arange(5, dtype=np.float32) / 3, "versions": {3: np.ones(2), 4: np.zeros(2)},
        "jobs": [(1.5, 2, 3)], "pair": (1, [2, 3]),
    }  # fmt: skip
    back = roundtrip(tree)
    assert back["t"] == 7 and back["lr"] == 0.05 and back["name"] == "x" and back["none"] is None
    assert math.isnan(back["nan"]) and back["inf"] == -math.inf
    assert type(back["f32"]) is np.float32 and back["f32"] == np.float32(0.1)
    assert type(back["i64"]) is np.int64 and back["flag"] is np.True_ and back["ok"] is True
    assert back["w"].dtype == np.float32 and back["w"].tobytes() == tree["w"].tobytes()
    assert set(back["versions"]) == {3, 4}  # int keys stay ints
    assert back["jobs"] == [(1.5, 2, 3)] and back["pair"] == (1, [2, 3])


def test_records_come_back_as_data_then_as_the_templates_classes():
    state = (Momentum(np.array([1.0, 2.0], np.float32)), Judge(0.5, True, (1, 2)), ())
    back = roundtrip(state)
    assert isinstance(back[0], Record) and back[0].name == "Momentum"  # no class looked up
    template = (Momentum(None), Judge(0.0, False, ()), ())
    restored = conform(back, template, "aggregation.rules")
    assert isinstance(restored[0], Momentum) and isinstance(restored[1], Judge)
    assert restored[0].previous.tobytes() == state[0].previous.tobytes()
    assert restored[1] == state[1]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (object(), r"state: a object cannot be stored in a checkpoint without pickle"),
        ({"f": lambda: 1}, r"state\['f'\]: a function cannot be stored"),
        (np.array(["a"], dtype=object), r"state: an array of dtype object cannot be stored"),
        (Momentum(np.array(["x"])), r"state.previous: an array of dtype <U1 cannot be stored"),
    ],
)
def test_what_cannot_be_stored_is_refused_with_its_path(tree, message):
    with pytest.raises(UnsafeState, match=message):
        encode(tree, {})


def test_a_state_of_another_shape_than_the_codes_is_an_error():
    back = roundtrip((Momentum(None),))
    with pytest.raises(
        UnsafeState, match=r"rules\[0\]: the checkpoint holds a Momentum, the code's state a Judge"
    ):
        conform(back, (Judge(0.0, False, ()),), "rules")
    with pytest.raises(UnsafeState, match="another shape"):
        conform(back, (), "rules")

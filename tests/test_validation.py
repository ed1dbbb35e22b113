"""The shared config checks: one message shape, bools are no numbers, open and closed ends."""

from __future__ import annotations

import numpy as np
import pytest

from rayfl.errors import ConfigError, DataError
from rayfl.validation import check_int, check_real, check_real_array, fail, is_int, is_real


def test_numbers_and_bools():
    assert is_real(1) and is_real(0.5) and is_real(np.float32(2)) and is_real(np.int64(3))
    assert not is_real(True) and not is_real(np.bool_(False)) and not is_real("1")
    assert is_int(3) and is_int(np.int32(3))
    assert not is_int(3.0) and not is_int(True) and not is_int(np.bool_(True))


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        ("a", {}, "x.y='a' must be a number, got str: fix it"),
        (True, {}, "x.y=True must be a number, got bool: fix it"),
        (float("inf"), {}, "x.y=inf must be finite: fix it"),
        (0, {"low": 0.0, "low_open": True}, "x.y=0 must be > 0: fix it"),
        (-0.5, {"low": 0.0}, "x.y=-0.5 must be >= 0: fix it"),
        (1.0, {"high": 1.0, "high_open": True}, "x.y=1.0 must be < 1: fix it"),
        (1.5, {"high": 1.0}, "x.y=1.5 must be <= 1: fix it"),
    ],
)
def test_check_real_messages(value, bounds, message):
    with pytest.raises(ConfigError) as info:
        check_real("x.y", value, fix="fix it", **bounds)
    assert str(info.value) == message


def test_check_real_accepts_the_closed_ends_and_returns_a_float():
    assert check_real("x", 0, low=0.0, high=1.0, fix="f") == 0.0
    assert type(check_real("x", np.float32(1.0), low=0.0, high=1.0, fix="f")) is float


def test_check_int_messages_and_error_class():
    assert check_int("n", np.int64(4), low=1, fix="f") == 4
    with pytest.raises(ConfigError, match=r"^n=2.0 must be an integer, got float: f$"):
        check_int("n", 2.0, low=1, fix="f")
    with pytest.raises(DataError, match=r"^n=0 must be >= 1: f$"):
        check_int("n", 0, low=1, fix="f", error=DataError)


def test_check_real_array_names_the_first_bad_client():
    a = check_real_array("b", [0.5, 0.9], low=0.0, high=1.0, high_open=True, fix="f")
    assert a.dtype == np.float64 and a.tolist() == [0.5, 0.9]
    with pytest.raises(ConfigError) as info:
        check_real_array("b", [[0.5, 1.0], [2.0, 0.1]], low=0.0, high=1.0, high_open=True, fix="f")
    assert str(info.value) == "b=1.0 (client index (0, 1)) must lie in [0, 1): f"
    with pytest.raises(ConfigError, match=r"must lie in \(0, inf\]"):
        check_real_array("b", [0.0], low=0.0, low_open=True, fix="f")


def test_fail_uses_the_error_class_it_is_given():
    with pytest.raises(DataError, match=r"^d.k='v' is odd: change it$"):
        fail("d.k", "v", "is odd", "change it", DataError)

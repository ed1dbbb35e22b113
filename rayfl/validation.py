"""Checks of config values, one set for every section of a preset; numpy only, no Ray, no torch.

Every failure is one line, ``"{field}={value!r} {problem}: {fix}"``: the field as a user writes
it in a preset, what is wrong, and what to write instead, e.g.
``incentive.beta_s=0 must be > 0: use a concession rate > 0, e.g. 0.002``. The error is a
:class:`~rayfl.errors.ConfigError` unless the caller names another class (the partitioners raise
:class:`~rayfl.errors.DataError`).

A bool (Python's or numpy's) is never a number here, although Python counts True as 1; a real
takes an int too; an integer must be integral (2.0 is not).

Example::

    >>> check_real("selection.k_fraction", 0.1, low=0.0, low_open=True, high=1.0, fix="use 0.1")
    0.1
    >>> check_int("selection.d", 0, low=1, fix="use e.g. 16")
    Traceback (most recent call last):
    ...
    rayfl.errors.ConfigError: selection.d=0 must be >= 1: use e.g. 16
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NoReturn

import numpy as np

from rayfl.errors import ConfigError


def is_real(value: Any) -> bool:
    """True for a real number (int or float, numpy's too), False for a bool or anything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_int(value: Any) -> bool:
    """True for an integral number (numpy's too), False for a bool or anything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def fail(
    field: str, value: Any, problem: str, fix: str, error: type[Exception] = ConfigError
) -> NoReturn:
    """Raises ``error("{field}={value!r} {problem}: {fix}")``."""
    raise error(f"{field}={value!r} {problem}: {fix}")


def check_real(
    field: str,
    value: Any,
    *,
    fix: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[Exception] = ConfigError,
) -> float:
    """``value`` as a float if it is a finite real in [low, high] (either end open on request).

    ``low`` or ``high`` None: no bound on that side.
    """
    if not is_real(value):
        fail(field, value, f"must be a number, got {type(value).__name__}", fix, error)
    v = float(value)
    if not math.isfinite(v):
        fail(field, value, "must be finite", fix, error)
    if low is not None and (v <= low if low_open else v < low):
        fail(field, value, f"must be {'>' if low_open else '>='} {low:g}", fix, error)
    if high is not None and (v >= high if high_open else v > high):
        fail(field, value, f"must be {'<' if high_open else '<='} {high:g}", fix, error)
    return v


def check_int(
    field: str, value: Any, *, fix: str, low: int, error: type[Exception] = ConfigError
) -> int:
    """``value`` as an int if it is an integer >= ``low``."""
    if not is_int(value):
        fail(field, value, f"must be an integer, got {type(value).__name__}", fix, error)
    if value < low:
        fail(field, value, f"must be >= {low}", fix, error)
    return int(value)


def check_real_array(
    field: str,
    value: Any,
    *,
    fix: str,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    error: type[Exception] = ConfigError,
) -> np.ndarray:
    """``value`` as a float64 array if every entry is finite and in [low, high] (ends as in
    :func:`check_real`); else names the first bad entry (``(client index (j,))``)."""
    a = np.asarray(value, dtype=np.float64)
    bad = ~np.isfinite(a)
    bad |= (a <= low) if low_open else (a < low)
    if high is not None:
        bad |= (a >= high) if high_open else (a > high)
    if bad.any():
        idx = tuple(int(j) for j in np.argwhere(bad)[0])
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        rng = f"{lo}{low:g}, {'inf' if high is None else f'{high:g}'}{hi}"
        fail(field, float(a[idx]), f"(client index {idx}) must lie in {rng}", fix, error)
    return a

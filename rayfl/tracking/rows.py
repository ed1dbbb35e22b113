"""What a tracker logs of a metric row."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """A metric row's finite numbers (NaN: not evaluated at this step), without ``iteration``."""
    out = {}
    for key, value in row.items():
        if key == "iteration" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out

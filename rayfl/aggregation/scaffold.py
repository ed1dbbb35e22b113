"""SCAFFOLD's server side (Karimireddy et al., ICML 2020): the server control variate c."""

from __future__ import annotations

from collections.abc import Callable

from rayfl.aggregation.base import Rule

SCAFFOLD_RULES: dict[str, Callable[..., Rule]] = {}
"""The shipped SCAFFOLD rules, by name."""

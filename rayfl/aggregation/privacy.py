"""Differential privacy for federated averaging (DP-FedAvg; McMahan et al., ICLR 2018)."""

from __future__ import annotations

from collections.abc import Callable

from rayfl.aggregation.base import Rule

PRIVACY_RULES: dict[str, Callable[..., Rule]] = {}
"""The shipped privacy rules, by name."""

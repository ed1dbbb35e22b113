"""``rayfl reproduce NAME``: the papers' experiments as commands.

Each entry is ``module:function`` with the signature
``reproduce(output: Path, *, quick: bool, seeds: int | None, address: str | None,
progress: bool | None) -> Path`` that writes its tables (markdown) and figures (PNG) into
``output`` and returns the path of the main table.
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rayfl.errors import ConfigError

REPRODUCTIONS = {
    "akafl": "rayfl.reproduce.akafl:reproduce",
    "incentive": "rayfl.reproduce.incentive:reproduce",
    # `rayfl reproduce incentive --ablation`: the mechanism with its parts switched off one by one
    "incentive-ablation": "rayfl.reproduce.incentive_ablation:reproduce_ablation",
}


def get(name: str) -> Callable[..., Path]:
    """The reproduce function for ``name``; ConfigError naming the choices otherwise."""
    if name not in REPRODUCTIONS:
        raise ConfigError(
            f"reproduction {name!r} does not exist: use one of {', '.join(REPRODUCTIONS)}"
        )
    module, func = REPRODUCTIONS[name].split(":")
    fn: Any = getattr(importlib.import_module(module), func)
    return fn


def machine_description(resources: Mapping[str, float]) -> str:
    """Where a reproduction ran, for its report: this host and the Ray cluster's resources
    (``ray.cluster_resources()``)."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores on this host; Ray cluster "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
    )

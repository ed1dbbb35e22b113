"""rayfl: federated learning simulations on Ray, from a laptop to an autoscaled GPU cluster.

>>> import rayfl
>>> result = rayfl.run("wkafl", overrides=["iterations=200"])  # doctest: +SKIP
>>> result.summary["final_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rayfl.config import ExperimentConfig, load_config, preset_names
from rayfl.errors import ConfigError, DataError, RayflError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "RayflError",
    "RunResult",
    "__version__",
    "load_config",
    "preset_names",
    "run",
    "tune",
]

if TYPE_CHECKING:
    from rayfl.api import RunResult, run
    from rayfl.tuning import tune


def __getattr__(name: str) -> Any:
    # Imported lazily: `rayfl.run` pulls in Ray and torch, `rayfl presets` should not.
    if name in ("run", "RunResult"):
        from rayfl import api

        return getattr(api, name)
    if name == "tune":
        from rayfl.tuning import tune

        return tune
    raise AttributeError(f"module 'rayfl' has no attribute {name!r}")

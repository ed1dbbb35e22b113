"""The Ray session of a run: connect to the running one, or start one and own it.

A run started inside a Ray Tune trial or a Ray job uses that Ray and never shuts it down; a run
that started Ray shuts it down at the end.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from rayfl import interrupts

# Imported by every worker process of a Ray this run starts, as soon as the process starts:
# Ray prestarts idle workers while the driver loads the data, and the client workers (and the
# server actor) are then created in processes that already hold torch and rayfl, instead of
# importing them after the driver asked for them (~2-4 s of a short run's start on 2 cores).
PRELOAD_MODULES = ("rayfl.clients.worker",)


def ensure_ray(address: str | None = None) -> bool:
    """Connects to or starts Ray if none is running; True if this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):  # a new local Ray: ours to set
        kwargs["include_dashboard"] = False
        kwargs["_system_config"] = {"preload_python_modules": list(PRELOAD_MODULES)}
    ray.init(address=address, **kwargs)
    interrupts.reinstall()  # ray.init replaced the CLI's SIGTERM handler with Ray's own
    return True

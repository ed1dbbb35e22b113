"""The Ray session of a run: connect to the running one, or start one and own it.

A run started inside a Ray Tune trial or a Ray job uses that Ray and never shuts it down; a run
that started Ray shuts it down at the end.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from rayfl import interrupts


def ensure_ray(address: str | None = None) -> bool:
    """Connects to or starts Ray if none is running; True if this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    interrupts.reinstall()  # ray.init replaced the CLI's SIGTERM handler with Ray's own
    return True

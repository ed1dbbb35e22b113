"""The Ray session of a run: connect to the running one, or start one and own it.

A run started inside a Ray Tune trial or a Ray job uses that Ray and never shuts it down; a run
that started Ray shuts it down at the end.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import ray

from rayfl import interrupts
from rayfl.errors import RayflError

# Not done, on purpose: preloading torch in Ray's prestarted workers (``_system_config=
# {"preload_python_modules": [...]}``) would start the client workers ~2 s sooner, but numpy is
# then imported before Ray sets OMP_NUM_THREADS=1 for the actor, so OpenBLAS runs 2 threads in
# each worker and the default preset's trajectory changes (final accuracy 0.8784 -> 0.9589 on
# this machine): worker numerics must not depend on how the worker process was started.


def ensure_ray(address: str | None = None, runtime_env: dict[str, Any] | None = None) -> bool:
    """Connects to or starts Ray if none is running; True if this call started it.

    ``runtime_env`` (e.g. ``{"py_modules": ["path/to/my_pkg"]}``) becomes the job's runtime
    environment, so the server and every client worker, on every node, can import a user's
    rules, selectors and tasks. It needs a Ray this call connects to: a Ray someone else
    initialised (a Tune trial, a notebook) already has its job's environment.
    """
    if ray.is_initialized():
        if runtime_env:
            raise RayflError(
                "runtime_env: Ray is already initialised in this process, so rayfl cannot set "
                "the job's runtime environment: pass it to your ray.init(runtime_env=...) or "
                "`ray job submit --runtime-env-json`"
            )
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": True}
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if address is None and not os.environ.get("RAY_ADDRESS"):  # a new local Ray: ours to set
        kwargs["include_dashboard"] = False
    ray.init(address=address, **kwargs)
    interrupts.reinstall()  # ray.init replaced the CLI's SIGTERM handler with Ray's own
    return True


def shutdown_ray() -> None:
    """Shuts down the Ray this process started, stopping Ray's autoscaler monitor first.

    ``ray.shutdown`` stops the monitor after the GCS, and the monitor's SIGTERM handler then
    waits about a second trying to report its exit to the GCS that is gone; stopped while the
    GCS is still up it exits at once (1.4 s -> 0.4 s on 2 cores). Uses Ray's private node
    handle: if that is missing, the plain shutdown runs.
    """
    node = getattr(ray._private.worker, "_global_node", None)
    kill_monitor = getattr(node, "kill_monitor", None)
    if kill_monitor is not None:
        with contextlib.suppress(Exception):  # best effort: ray.shutdown below stops it anyway
            kill_monitor(check_alive=False)
    ray.shutdown()

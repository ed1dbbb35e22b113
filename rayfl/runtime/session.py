"""The Ray session of a run: connect to the running one, or start one and own it.

A run started inside a Ray Tune trial or a Ray job uses that Ray and never shuts it down; a run
that started Ray shuts it down at the end.
"""

from __future__ import annotations

import contextlib
import faulthandler
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray

from rayfl import interrupts
from rayfl.errors import RayflError

# Not done, on purpose: preloading the worker module in Ray's prestarted workers (``_system_config=
# {"preload_python_modules": [...]}``). Measured 2026-12-02 (with ``rayfl.threads.limit``, which
# keeps the numbers of such a worker those of one Ray starts for the actor): Ray starts those
# processes when the driver registers, at the end of ``ray.init``, also with
# ``enable_worker_prestart``, so two actors created right after it answered in the same 1.7-1.8 s
# with the preload as without; only a driver that works ~2 s after ``ray.init`` would gain.


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
    try:
        with contextlib.ExitStack() as local:
            if "include_dashboard" in kwargs:
                local.enter_context(_agent_port_from_the_os())
                local.enter_context(_no_usage_stats_server())
                local.enter_context(_quiet(_AUTH_NOTICE_LOGGER))
                if interrupts.installed():  # seconds: a SIGTERM waits for their end, not lost
                    local.enter_context(interrupts.held())
                    local.enter_context(_ray_keeps_its_signal_handlers_out())
            ray.init(address=address, **kwargs)
    except KeyboardInterrupt:  # Ctrl-C, or the SIGTERM held back: stop the Ray it started
        if ray.is_initialized():
            shutdown_ray() if "include_dashboard" in kwargs else ray.shutdown()
        raise
    interrupts.reinstall()  # ray.init replaced the CLI's SIGTERM handler with Ray's own
    return True


# Ray 2.5x+ turns token authentication on for a local cluster and says so in a WARNING on every
# start ("Set RAY_AUTH_MODE=disabled to opt out"). For a Ray that rayfl starts and stops itself
# that is no news and no action for the user: their first command's output stays rayfl's own.
_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """The logger ``logger_name`` passes only errors during the block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _ray_keeps_its_signal_handlers_out() -> Iterator[None]:
    """While a local Ray starts for the command line, Ray sets no signal handler in the driver.

    - ``ray.init``'s Python handler (``sys.exit(15)``) would replace the one of
      :func:`rayfl.interrupts.held`, which only records a SIGTERM while Ray forks its processes.
    - The C++ core worker's failure handler (absl's) would answer a SIGTERM that comes while the
      driver connects with a stack dump on the terminal (3 of 16 SIGTERMs sent 1.8-3.8 s into
      the start, `rayfl run tiny`, this 2-core Xeon); rayfl's one-line stop is what a user
      should see. It also prints a stack on a crash: Python's ``faulthandler`` does that for
      the driver instead.

    Swaps Ray's private ``set_sigterm_handler`` and ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER``
    (the variable of the same name, read when the driver's core worker starts) for the call;
    where they are not there any more, nothing changes.
    """
    utils = getattr(ray._private, "utils", None)
    constants = getattr(ray._private, "ray_constants", None)
    set_handler = getattr(utils, "set_sigterm_handler", None)
    disabled = getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    if set_handler is not None:
        utils.set_sigterm_handler = lambda handler: None
    if disabled is not None:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        faulthandler.enable()
    try:
        yield
    finally:
        if set_handler is not None:
            utils.set_sigterm_handler = set_handler
        if disabled is not None:
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = disabled


@contextlib.contextmanager
def _no_usage_stats_server() -> Iterator[None]:
    """While a new local Ray starts without its dashboard, Ray starts no API server.

    With ``include_dashboard=False`` Ray still starts its dashboard process with one module, the
    one that reports usage statistics (``--modules-to-load=UsageStatsHead``), and ``ray.init``
    waits until that process has registered: 0.6-1.1 s of a 2-4 s start on 2 cores. A Ray that
    rayfl starts for one run serves no dashboard, jobs or state API either way. Ray's private
    ``Node.start_api_server`` is swapped for the call; if it is not there any more, Ray starts
    as it would anyway.
    """
    try:
        from ray._private.node import Node as node_class
    except ImportError:
        node_class = None
    original = getattr(node_class, "start_api_server", None)
    if original is None:
        yield
        return

    def skip(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard is not False:  # a dashboard was asked for: Ray's own
            original(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    node_class.start_api_server = skip
    try:
        yield
    finally:
        node_class.start_api_server = original


@contextlib.contextmanager
def _agent_port_from_the_os() -> Iterator[None]:
    """While a new local Ray starts, its dashboard agent takes a free port from the OS.

    ``ray.init`` has no argument for the agent's HTTP port and always asks for 52365. When another
    Ray runs on the machine (a second experiment, a test session, a Tune search), the port is
    taken: the agent retries for 3.3 s and the raylet waits for it, so every ``ray.init`` after
    the first one on a machine took ~3 s longer (measured: 5.7-7.7 s -> 2.6-3.8 s beside a
    running Ray). Nothing uses that port in a Ray that rayfl starts (no dashboard, no job
    server). Ray's private ``RayParams`` is swapped for the call; if it is not there any more,
    or has no such parameter, Ray starts as it would anyway.
    """
    module = getattr(ray._private, "parameter", None)
    original = getattr(module, "RayParams", None)
    try:
        known = "dashboard_agent_listen_port" in inspect.signature(original).parameters
    except (TypeError, ValueError):
        known = False
    if not known:
        yield
        return

    class _RayParams(original):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    module.RayParams = _RayParams
    try:
        yield
    finally:
        module.RayParams = original


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

"""SIGTERM stops a run the way Ctrl-C does.

Clusters end a process with SIGTERM: Kubernetes, Slurm, spot preemption and ``ray job stop``.
The drivers already stop gracefully on ``KeyboardInterrupt`` (a checkpoint that matches the
metrics, summary.json with status "interrupted" and the resume command), so the handler here
raises :class:`Terminated`, a ``KeyboardInterrupt``, in the main thread.

Only the command line installs it (:func:`install`). ``rayfl.run`` called as a library (in a
Ray Tune trial, in a user's script or Ray job) keeps whatever SIGTERM handling its process has:
:func:`reinstall` does nothing unless :func:`install` asked for the handler in this process.

Two things of Ray's shape this module:

- ``ray.init`` puts its own SIGTERM handler in the driver (``sys.exit(15)``; see
  ``ray/_private/worker.py``, ``init``), and the C++ core worker it starts adds one that dumps a
  stack. ``ensure_ray`` calls :func:`reinstall` right after ``ray.init``, which puts ours back
  in place of both. While a local Ray starts, ``ensure_ray`` keeps Ray's handler out and holds a
  SIGTERM back (:func:`held`): ``ray.init`` forks its processes with a ``preexec_fn``, and an
  exception a handler raises while Python runs its at-fork hooks is printed as "Exception
  ignored" and lost, so the process went on running. Where Ray's handler does answer (joining a
  cluster), :func:`displaced` lets the CLI recognise its ``SystemExit(15)``.
- ``ray.get`` re-raises an interrupt that arrives while it waits as a plain
  ``KeyboardInterrupt``: the subclass is lost. So the handler records the signal, and
  :func:`received` tells which one stopped the process.

Example (what the CLI does around a command)::

    restore = install()
    try:
        rayfl.run("tiny")  # SIGTERM now ends it like Ctrl-C
    except KeyboardInterrupt:
        code = exit_code()  # 143 after SIGTERM, 130 after Ctrl-C
    finally:
        restore()
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

# What the process exits with after a signal, as a shell reports a death by it: 128 + number.
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM (after :func:`install`)."""


_wanted = False  # install() asked for the handler in this process
_received: int | None = None  # the first SIGTERM seen since install(), or None


def install() -> Callable[[], None]:
    """Makes SIGTERM raise :class:`Terminated` in the main thread; returns a function that puts
    the previous handler back.

    Idempotent (a second call while installed changes nothing and its restore does nothing). Off
    the main thread, where Python cannot set signal handlers, it does nothing.
    """
    global _wanted, _received
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    previous = signal.getsignal(signal.SIGTERM)
    if previous is _on_sigterm:
        return _nothing
    _wanted, _received = True, None
    signal.signal(signal.SIGTERM, _on_sigterm)

    def restore() -> None:
        global _wanted
        _wanted = False
        if threading.current_thread() is threading.main_thread():
            # None: the previous handler was set outside Python; the default is the closest.
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return restore


def reinstall() -> None:
    """Puts the handler back after ``ray.init`` replaced it with Ray's own.

    Does nothing unless :func:`install` asked for it in this process (a library caller keeps its
    own handling) or off the main thread.
    """
    if not _wanted or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)


def installed() -> bool:
    """True if :func:`install` asked for the handler in this process and this is its main
    thread (the command line; not ``rayfl.run`` called as a library)."""
    return _wanted and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Within the block a SIGTERM is only recorded; after it, :class:`Terminated` is raised if
    one came. For a few seconds of work that must not be cut in the middle (starting Ray).

    Does nothing unless :func:`install` asked for the handler in this process, or off the main
    thread. The handler of :func:`install` is in place after the block, whatever the block set.
    """
    if not installed():
        yield
        return
    before = _received
    signal.signal(signal.SIGTERM, _record)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if before is None and _received is not None:
        raise Terminated("SIGTERM")


def displaced() -> bool:
    """True if :func:`install` asked for the handler and another one answers SIGTERM now (Ray's,
    while ``ray.init`` runs: it exits with ``SystemExit(15)``)."""
    return _wanted and signal.getsignal(signal.SIGTERM) is not _on_sigterm


def received() -> int | None:
    """The signal number of the SIGTERM this process received since :func:`install`, or None."""
    return _received


def exit_code() -> int:
    """The exit code of a process stopped by an interrupt: 143 after SIGTERM, else 130 (Ctrl-C)."""
    return EXIT_SIGTERM if _received == signal.SIGTERM else EXIT_SIGINT


def signal_name() -> str:
    """``"SIGTERM"`` or ``"SIGINT"``: the signal that stopped the process, for messages."""
    return "SIGTERM" if _received == signal.SIGTERM else "SIGINT"


def _on_sigterm(signum: int, frame: FrameType | None) -> Any:
    global _received
    if _received is not None:
        # A graceful stop is already under way (writing the checkpoint and summary): let it
        # finish. Whoever sent SIGTERM follows up with SIGKILL if it takes too long.
        return None
    _received = signum
    on_sigint = signal.getsignal(signal.SIGINT)
    if callable(on_sigint) and on_sigint is not signal.default_int_handler:
        # Someone handles Ctrl-C gracefully in their own way (Ray Tune saves the experiment
        # state and returns): SIGTERM does what Ctrl-C would do.
        return on_sigint(signal.SIGINT, frame)
    raise Terminated("SIGTERM")


def _record(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is None:
        _received = signum


def _nothing() -> None:
    return None

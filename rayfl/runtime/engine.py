"""The interface between the run driver (:mod:`rayfl.runtime.driver`) and an engine.

An engine runs iterations (K-async, :class:`rayfl.server.engine.KAsyncEngine`) or rounds
(synchronous, :class:`rayfl.rounds.engine.RoundsEngine`) and hands their rows to the driver in
:class:`Chunk` s. The driver owns everything else: the run folder, the metric files, checkpoint
files, the progress bar, interrupts and summary.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rayfl.types import SharedData


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Rows of consecutive iterations (or rounds), and/or a checkpoint.

    ``checkpoint``, when set, is the engine's state right after the last row handed over so far
    (this chunk's included): the driver writes it after the rows, so a checkpoint never runs
    ahead of the metrics.
    """

    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    updates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    checkpoint: dict[str, Any] | None = None


class Records(Protocol):
    """An engine's own table in the run folder (e.g. rounds.parquet), keyed by iteration."""

    def extend(self, records: list[dict[str, Any]]) -> None: ...
    def load(self, before_round: int) -> None: ...
    def trim(self, before_round: int) -> None: ...
    def flush(self) -> None: ...
    def compact(self) -> None: ...


class Engine(Protocol):
    """What the driver asks of an engine, in the order it asks."""

    unit: str  # the progress bar's unit: "it" or "round"
    actor: str  # what died when a Ray actor error reaches the driver ("the server actor")
    weights: np.ndarray  # (P,) float32, the final global model, once finished

    def records(self, run_dir: Path) -> Records | None:
        """The engine's own table, if it has one."""
        ...

    def prestart(self) -> None:
        """Starts what needs no data (the worker or server processes) right after Ray is up, so
        that their start-up overlaps the data's put; :meth:`start` does it if this was not
        called."""
        ...

    def start(self, data: SharedData, restore: dict[str, Any] | None) -> None:
        """Starts the workers (and server) on ``data`` (in the object store), from scratch or
        from a checkpoint's state."""
        ...

    def chunks(self) -> Iterator[Chunk]:
        """The run's rows, chunk by chunk, with the periodic checkpoints; ends at T."""
        ...

    def stop(self) -> None:
        """Asks for no new work: the chunks still in flight come, then :meth:`chunks` ends."""
        ...

    def checkpoint(self) -> dict[str, Any]:
        """The state after the last chunk (a finished run's final checkpoint)."""
        ...

    def finish(self, model_path: Path) -> None:
        """Saves the final model (a torch state_dict) and sets :attr:`weights`."""
        ...

    def interrupted(self, log: Callable[[Chunk], None]) -> dict[str, Any] | None:
        """After Ctrl-C / SIGTERM: hands the rows still in flight to ``log``, then returns the
        latest state it can give within a few seconds (None if none). The driver writes it if
        it is not ahead of the rows logged, dropping any rows after it."""
        ...

    def summary(self, finished: bool) -> dict[str, Any]:
        """Engine-specific fields of summary.json (``finished``: the run ended normally, so the
        workers, nodes, parameters and counters are known)."""
        ...

    def postfix(self, last: dict[str, Any], last_eval: dict[str, Any] | None) -> dict[str, Any]:
        """The progress bar's numbers after a chunk."""
        ...

    def close(self) -> None:
        """Kills the actors the engine started."""
        ...

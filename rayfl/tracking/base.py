"""The tracker interface and the run's set of trackers (:class:`Tracking`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from rayfl.errors import RayflError
from rayfl.registry import build
from rayfl.tracking.rows import numeric  # noqa: F401 - re-exported for user trackers

STATE_FILE = "tracking.json"


class Tracker(Protocol):
    """One tracking backend. ``start`` returns the identity to resume it with later."""

    def start(
        self, run_dir: Path, name: str, config: Mapping[str, Any], resume: Mapping[str, Any] | None
    ) -> dict[str, Any]: ...

    def log(self, rows: list[dict[str, Any]]) -> None: ...

    def artifacts(self, paths: Iterable[Path]) -> None: ...

    def finish(self, status: str) -> None: ...


def _tensorboard() -> Tracker:
    from rayfl.tracking.tb import TensorBoardTracker

    return TensorBoardTracker()


def _mlflow() -> Tracker:
    from rayfl.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker()


def _wandb() -> Tracker:
    from rayfl.tracking.wandb_tracker import WandbTracker

    return WandbTracker()


TRACKERS: dict[str, Callable[[], Tracker]] = {
    "tensorboard": _tensorboard,
    "mlflow": _mlflow,
    "wandb": _wandb,
}
"""The shipped trackers; each imports its library only when used (``pip install rayfl[mlflow]``)."""


class Tracking:
    """The run's trackers; logs each metric row once, even across resumes."""

    def __init__(self, run_dir: Path, trackers: dict[str, Tracker], state: dict[str, Any]):
        self.run_dir, self.trackers, self.state = run_dir, trackers, state

    def log(self, rows: list[dict[str, Any]]) -> None:
        """Sends the rows no tracker has seen yet (a resumed run repeats none)."""
        if not self.trackers or not rows:
            return
        for name, tracker in list(self.trackers.items()):
            last = self.state[name].get("last_step", -1)
            fresh = [r for r in rows if r["iteration"] > last]
            if not fresh:
                continue
            try:
                tracker.log(fresh)
            except Exception as e:  # noqa: BLE001 - a tracker must not cost the run its results
                self._drop(name, e)
                continue
            self.state[name]["last_step"] = fresh[-1]["iteration"]
        self._save()

    def _drop(self, name: str, error: Exception) -> None:
        """Stops sending to a tracker that failed mid-run; the run and its files go on."""
        warnings.warn(
            f"tracking: {name} failed ({_reason(error)}) and is off for the rest of this run; "
            "the run folder has every row",
            stacklevel=3,
        )
        self.trackers.pop(name, None)

    def artifacts(self, paths: Iterable[Path]) -> None:
        paths = [p for p in paths if Path(p).is_file()]
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.artifacts(paths)
            except Exception as e:  # noqa: BLE001 - as in log
                self._drop(name, e)

    def finish(self, status: str) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.finish(status)
            except Exception as e:  # noqa: BLE001 - as in log
                self._drop(name, e)
        self._save()

    def _save(self) -> None:
        (self.run_dir / STATE_FILE).write_text(json.dumps(self.state, indent=1))


def open_tracking(
    names: Iterable[str], run_dir: Path, name: str, config: Mapping[str, Any]
) -> Tracking:
    """Starts (or, with a ``tracking.json`` in ``run_dir``, resumes) the configured trackers."""
    path = run_dir / STATE_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    trackers, state = {}, {}
    for i, tracker_name in enumerate(names):
        tracker = build(f"tracking[{i}]", tracker_name, TRACKERS, {}, "tracker")
        try:
            ident = tracker.start(run_dir, name, config, saved.get(tracker_name))
        except ImportError as e:
            raise RayflError(
                f"tracking[{i}]={tracker_name!r} needs a library that is not installed ({e}): "
                f"pip install 'rayfl[{tracker_name}]'"
            ) from None
        except Exception as e:  # noqa: BLE001 - a store that cannot be reached, a bad URI, ...
            raise RayflError(
                f"tracking[{i}]={tracker_name!r} could not start ({_reason(e)}): check its "
                "settings (MLFLOW_TRACKING_URI, WANDB_MODE, ...) or drop it from tracking"
            ) from None
        state[tracker_name] = {**(saved.get(tracker_name) or {}), **ident}
        trackers[tracker_name] = tracker
    tracking = Tracking(run_dir, trackers, state)
    if trackers:
        tracking._save()
    return tracking


def _reason(error: Exception) -> str:
    return (" ".join(f"{type(error).__name__}: {error}".split()))[:240]


def add_files(run_dir: Path, cfg: Any, paths: Iterable[Path], status: str) -> None:
    """Adds files made after the run (its figures) to the run's tracked runs."""
    tracking = open_tracking(cfg.tracking, Path(run_dir), cfg.name, cfg.to_dict())
    tracking.artifacts(paths)
    tracking.finish(status)

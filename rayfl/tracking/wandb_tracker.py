"""Weights & Biases: one W&B run per rayfl run, in project ``WANDB_PROJECT`` (default ``rayfl``).

Offline unless ``WANDB_MODE`` says otherwise (a simulator on a cluster often has no route to
wandb.ai; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later). The files live in the run
folder (``<run_dir>/wandb``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rayfl.tracking.rows import numeric


class WandbTracker:
    """Metrics with ``step = iteration``, the config, files saved with the run."""

    def start(
        self, run_dir: Path, name: str, config: Mapping[str, Any], resume: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "rayfl"),
            name=run_dir.name,
            group=name,
            id=None if resume is None else resume["run_id"],
            resume=None if resume is None else "must",
            config=dict(config),
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
        )
        return {"run_id": self.run.id}

    def log(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.run.log(numeric(row), step=row["iteration"])

    def artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            if Path(path).name == "config.yaml":  # W&B keeps the config itself, in that name
                continue
            self.run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=0 if status in ("finished", "stopped") else 1)

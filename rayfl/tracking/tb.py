"""TensorBoard: event files in ``<run_dir>/tensorboard`` (tensorboardX, which Ray Tune already
installs; read them with ``tensorboard --logdir <run_dir>``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rayfl.tracking.rows import numeric


class TensorBoardTracker:
    """Scalars per iteration, the config as text; a resumed run appends to the same log dir."""

    def start(
        self, run_dir: Path, name: str, config: Mapping[str, Any], resume: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        from tensorboardX import SummaryWriter

        logdir = run_dir / "tensorboard"
        self.writer = SummaryWriter(logdir=str(logdir))
        if resume is None:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)
        return {"logdir": str(logdir)}

    def log(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            for key, value in numeric(row).items():
                self.writer.add_scalar(key, value, row["iteration"])
        self.writer.flush()

    def artifacts(self, paths: Iterable[Path]) -> None:
        """TensorBoard keeps no files: the figures and model stay in the run folder."""

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, 0)
        self.writer.close()

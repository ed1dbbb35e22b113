"""MLflow: one MLflow run per rayfl run, in the experiment named after the config's ``name``, on
the tracking server of ``MLFLOW_TRACKING_URI`` (MLflow's own default when unset)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rayfl.tracking.rows import numeric

_STATUS = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{'data.num_clients': '100', ...}``: MLflow parameters are flat strings."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]  # MLflow's limit per parameter value
    return out


class MlflowTracker:
    """Metrics per iteration, the resolved config as parameters, files as artifacts."""

    def start(
        self, run_dir: Path, name: str, config: Mapping[str, Any], resume: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        # The environment's URI first: another library in this process (Ray Tune's MLflow
        # callback) may have set MLflow's global one.
        self.client = MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        if resume is not None:
            self.run_id = resume["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"run_id": self.run_id}
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        run = self.client.create_run(experiment_id, run_name=run_dir.name)
        self.run_id = run.info.run_id
        params = list(_flat(config).items())
        from mlflow.entities import Param

        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            batch = [Param(k, v) for k, v in params[start : start + 100]]
            self.client.log_batch(self.run_id, params=batch)
        return {"run_id": self.run_id, "experiment_id": experiment_id}

    def log(self, rows: list[dict[str, Any]]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, row["iteration"])
            for row in rows
            for key, value in numeric(row).items()
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, _STATUS.get(status, "FAILED"))

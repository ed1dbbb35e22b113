"""Experiment tracking: every metric row, the config, the final model and the figures, sent to
TensorBoard, MLflow or Weights & Biases as a run goes (``tracking: [tensorboard, mlflow, wandb]``).

The run folder stays the record of truth (Parquet files); trackers mirror it. Each tracker's
identity (TensorBoard's log dir, MLflow's run id, W&B's run id) and the last step it logged are
kept in the run folder's ``tracking.json``, so ``rayfl run --resume`` continues the same tracked
run and never logs a step twice. A tracker is named like every other extension point: a shipped
name (:data:`TRACKERS`) or an import path to a factory of a :class:`Tracker`.
"""

from rayfl.tracking.base import TRACKERS, Tracker, Tracking, add_files, open_tracking

__all__ = ["TRACKERS", "Tracker", "Tracking", "add_files", "open_tracking"]

"""The server's evaluation of global models, shared by both engines (no Ray).

Two fixed, seeded subsets of the test set:

- the **evaluation set** (``eval/accuracy``, ``eval/loss``): the whole test set, or
  ``eval.max_samples`` of it drawn from ``seeding.rng(seed, EVAL_SUBSET)``;
- the **validation set** of judgement (AKAFL-RJ spec section 6): ``eval.validation_samples`` of
  it drawn from ``seeding.rng(seed, VALIDATION)``, built on first use.

Both keep test-set order, so the accuracy of a model is the same on any machine that computes the
same logits. The client task (``client.task``, :mod:`rayfl.clients.task`) turns the samples into
tensors (``batch``) and scores them (``evaluate``), so a task that is not classification reports
its own loss (and NaN accuracy if it has no notion of correct).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rayfl import seeding
from rayfl.clients.shipped import build_task
from rayfl.clients.task import ClientTask, DataSpec
from rayfl.config import ExperimentConfig
from rayfl.models import set_flat


def eval_subset(
    cfg: ExperimentConfig, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The server's evaluation set: the test set, or ``eval.max_samples`` of it (seeded, in
    test-set order)."""
    if cfg.eval.max_samples is None or cfg.eval.max_samples >= len(y_test):
        return x_test, y_test
    pick = seeding.rng(cfg.seed, seeding.EVAL_SUBSET).choice(
        len(y_test), size=cfg.eval.max_samples, replace=False
    )
    pick.sort()
    return x_test[pick], y_test[pick]


def validation_subset(
    cfg: ExperimentConfig, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Judgement's validation set: ``eval.validation_samples`` of the test set (seeded)."""
    n_val = min(cfg.eval.validation_samples, len(y_test))
    pick = seeding.rng(cfg.seed, seeding.VALIDATION).choice(len(y_test), n_val, replace=False)
    pick.sort()
    return x_test[pick], y_test[pick]


class Evaluator:
    """Evaluates flat weight vectors with one model instance on the server's device.

    Args:
        cfg: the run's config (``eval.*`` and the seed).
        model: a model of the run's architecture; its parameters are overwritten on each call.
        x_test, y_test: the test set, e.g. (n, C, H, W) uint8 images and (n,) int64 labels.
        spec: the data set as the client task sees it (:class:`DataSpec`).
        device: where the model lives.

    Raises:
        ConfigError: ``client.task`` does not build, or refuses the data set (the server builds
            it before any worker, so a bad task fails the run first, in one line).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        x_test: np.ndarray,
        y_test: np.ndarray,
        spec: DataSpec,
        device: torch.device,
    ):
        self.cfg = cfg
        self.model = model
        self.device = device
        self.task = build_task(cfg.client.task, cfg.client.task_params, spec)
        self.x_eval, self.y_eval = eval_subset(cfg, x_test, y_test)
        self._test = (x_test, y_test)
        self._validation: tuple[np.ndarray, np.ndarray] | None = None

    def evaluate(self, w: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) of the flat weights ``w`` on the evaluation set."""
        return self._on(w, self.x_eval, self.y_eval)

    def validation_accuracy(self, w: np.ndarray) -> float:
        """Accuracy of ``w`` on judgement's validation set."""
        if self._validation is None:
            self._validation = validation_subset(self.cfg, *self._test)
        return self._on(w, *self._validation)[0]

    def _on(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        set_flat(self.model, w)
        return evaluate(self.task, self.model, x, y, self.device, self.cfg.eval.batch_size)


@torch.no_grad()
def evaluate(
    task: ClientTask,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` on samples ``x`` and targets ``y``, in batches, as the
    task's :meth:`~ClientTask.evaluate` scores them (accuracy NaN for a task without one)."""
    model.eval()
    correct: float = 0  # an int for classification; NaN for a task without accuracy
    total_loss = 0.0
    for start in range(0, x.shape[0], batch_size):
        end = start + batch_size
        # copies: the object store's arrays are read-only, and torch wants writable ones
        inputs, targets = task.batch(np.array(x[start:end]), np.array(y[start:end]), device)
        loss_sum, right = task.evaluate(model, inputs, targets)
        total_loss += loss_sum
        correct += right
    n = max(1, x.shape[0])
    return correct / n, total_loss / n

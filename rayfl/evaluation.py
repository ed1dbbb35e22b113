"""The server's evaluation of global models, shared by both engines (no Ray).

Two fixed, seeded subsets of the test set:

- the **evaluation set** (``eval/accuracy``, ``eval/loss``): the whole test set, or
  ``eval.max_samples`` of it drawn from ``seeding.rng(seed, EVAL_SUBSET)``;
- the **validation set** of judgement (AKAFL-RJ spec section 6): ``eval.validation_samples`` of
  it drawn from ``seeding.rng(seed, VALIDATION)``, built on first use.

Both keep test-set order, so the accuracy of a model is the same on any machine that computes the
same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rayfl import seeding
from rayfl.config import ExperimentConfig
from rayfl.models import set_flat
from rayfl.training import Normalizer, evaluate


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
        x_test, y_test: the test set, (n, C, H, W) uint8 and (n,) int64.
        mean, std: the data set's per-channel normalisation.
        device: where the model lives.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        model: nn.Module,
        x_test: np.ndarray,
        y_test: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
    ):
        self.cfg = cfg
        self.model = model
        self.x_eval, self.y_eval = eval_subset(cfg, x_test, y_test)
        self._test = (x_test, y_test)
        self._validation: tuple[np.ndarray, np.ndarray] | None = None
        self.normalize = Normalizer(mean, std, device)

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
        return evaluate(self.model, x, y, self.normalize, self.cfg.eval.batch_size)

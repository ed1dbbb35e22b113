"""Server optimizers: how the server turns w_t and the chain's step into w_{t+1}.

A :class:`~rayfl.aggregation.base.ServerOptimizer` is ``init(params) -> state`` and
``apply(step, state, params) -> (new_params, state)``: it sees the final :class:`Step` of the
rule chain (g_t in ``step.direction``, eta_t in ``step.lr``) and the current model w_t, so plain
SGD, server momentum, adaptive server optimizers (FedAdam, FedYogi) and mixing rules (FedAsync)
all fit. Its state is checkpointed with the run; a candidate that judgement rejects leaves it
as it was.

Configs name one with ``aggregation.optimizer`` (a shipped name or an import path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from rayfl.aggregation.base import ServerOptimizer, Step


class NoState(NamedTuple):
    """The state of an optimizer that keeps none."""


def sgd() -> ServerOptimizer:
    """Plain SGD on the aggregated direction: w_{t+1} = w_t - eta_t * g_t (AKAFL-RJ, WKAFL,
    K-async SGD). float32 throughout, as the server has always computed it."""

    def init(params: np.ndarray) -> NoState:
        return NoState()

    def apply(step: Step, state: NoState, params: np.ndarray) -> tuple[np.ndarray, NoState]:
        assert step.direction is not None  # the chain always sets it
        new = (params - np.float32(step.lr) * step.direction).astype(np.float32, copy=False)
        return new, state

    return ServerOptimizer(init, apply)


OPTIMIZERS: dict[str, Callable[..., ServerOptimizer]] = {"sgd": sgd}
"""The shipped server optimizers, by name."""

"""A server optimizer written against rayfl's public API only.

A server optimizer is ``ServerOptimizer(init, apply)`` from ``rayfl.aggregation``: ``init(params)
-> state`` and ``apply(step, state, params) -> (new_params, state)``, where ``step.direction`` is
the rule chain's g_t and ``step.lr`` its eta_t. It must return float32 params of the same shape.

This one runs on both of ``aggregation.backend``'s backends (numpy on the host, torch on the
server's GPU): it says so in ``backends`` and uses ``rayfl.aggregation.arrays`` where numpy and
torch differ (making zeros, the float32 cast); its arithmetic is the same on both.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rayfl.aggregation import ServerOptimizer, Step, arrays


class MomentumState(NamedTuple):
    velocity: np.ndarray  # (P,) float32


def server_momentum(beta: float = 0.9, nesterov: bool = False) -> ServerOptimizer:
    """Heavy-ball server momentum (FedAvgM, Hsu et al. 2019):
    v_{t+1} = beta * v_t + g_t,  w_{t+1} = w_t - eta_t * v_{t+1}
    (Nesterov: w_{t+1} = w_t - eta_t * (g_t + beta * v_{t+1})).

    The velocity is the optimizer's state: checkpointed with the run, and left unchanged when
    judgement rejects a candidate (the model did not move)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError("beta must be in [0, 1)")

    def init(params: np.ndarray) -> MomentumState:
        return MomentumState(arrays.zeros(params))  # on the params' backend and device

    def apply(step: Step, state: MomentumState, params: np.ndarray):
        v = np.float32(beta) * state.velocity + step.direction
        move = step.direction + np.float32(beta) * v if nesterov else v
        new = arrays.float32(params - np.float32(step.lr) * move)
        return new, MomentumState(arrays.float32(v))

    return ServerOptimizer(init, apply, backends=("numpy", "torch"))

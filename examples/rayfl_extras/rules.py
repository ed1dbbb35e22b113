"""Two aggregation rules written against rayfl's public rule API only.

A rule is ``Rule(init, update, stage, commit)`` from ``rayfl.aggregation``: ``init(params) ->
state``, ``update(step, state, params) -> (step, state)`` returning a new ``Step`` via
``dataclasses.replace``. ``params`` is the current global model w_t, read-only.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from rayfl.aggregation import Rule, Step


class ClipState(NamedTuple):
    bound: float | None  # the running clip bound; None until the first iteration


def adaptive_clip(quantile: float = 0.5, decay: float = 0.9, factor: float = 2.0) -> Rule:
    """Clips every update to ``factor`` times a running estimate of the updates' norm.

    The estimate is an exponential moving average of the ``quantile`` of the K norms seen each
    iteration (in the spirit of Andrew et al., "Differentially private learning with adaptive
    clipping", NeurIPS 2021, without the privacy part). Stage ``updates``; records
    ``extras/clip_bound`` and ``extras/clipped``. The state is one float: checkpointed with
    the run, so a resumed run clips exactly as an unbroken one.
    """
    if not 0.0 <= quantile <= 1.0 or not 0.0 <= decay < 1.0 or factor <= 0.0:
        raise ValueError("quantile must be in [0, 1], decay in [0, 1), factor > 0")

    def init(params: np.ndarray) -> ClipState:
        return ClipState(None)

    def update(step: Step, state: ClipState, params: np.ndarray) -> tuple[Step, ClipState]:
        norms = np.linalg.norm(step.updates.astype(np.float64), axis=1)  # (K,)
        seen = float(np.quantile(norms, quantile))
        bound = seen if state.bound is None else decay * state.bound + (1 - decay) * seen
        limit = factor * bound
        scale = np.minimum(1.0, limit / np.maximum(norms, 1e-12)).astype(np.float32)
        clipped = step.updates * scale[:, None]
        step = dataclasses.replace(step, updates=clipped.astype(np.float32, copy=False))
        step = step.with_metrics(
            **{"extras/clip_bound": limit, "extras/clipped": float((scale < 1).sum())}
        )
        return step, ClipState(bound)

    return Rule(init, update, "updates")


def trimmed_mean(trim: float = 0.1) -> Rule:
    """The aggregator of Yin et al. (ICML 2018): per coordinate, drop the ``trim`` fraction of
    the largest and of the smallest of the K values and average the rest (robust to a few
    Byzantine updates). Ignores the weights; sets ``direction``. Stage ``aggregate``."""
    if not 0.0 <= trim < 0.5:
        raise ValueError("trim must be in [0, 0.5)")

    def init(params: np.ndarray) -> tuple[()]:
        return ()

    def update(step: Step, state: tuple[()], params: np.ndarray) -> tuple[Step, tuple[()]]:
        k = step.updates.shape[0]
        cut = int(np.floor(trim * k))
        ordered = np.sort(step.updates, axis=0)  # (K, P) per coordinate
        kept = ordered[cut : k - cut] if k - 2 * cut > 0 else ordered
        direction = kept.astype(np.float64).mean(axis=0).astype(np.float32)
        return dataclasses.replace(step, direction=direction).with_metrics(
            **{"extras/trimmed": float(2 * cut)}
        ), state

    return Rule(init, update, "aggregate")

"""A client task with per-client state, written against rayfl's public task API only.

A task subclasses ``rayfl.clients.task.ClientTask`` and overrides the hooks its problem changes:
``batch``, ``loss``, ``gradient``, ``step``, ``init_state`` / ``finish`` (the client's state,
kept by the server between the client's jobs and checkpointed with the run), ``evaluate``.
"""

from __future__ import annotations

import numpy as np
import torch

from rayfl.clients.task import ClientTask


class ClientMomentum(ClientTask):
    """Each client keeps its own momentum buffer m_i across its jobs (local momentum, in the
    spirit of FedCM / Mime's client-side momentum): every local gradient becomes
    g + beta * m_i, and after local training m_i <- (w_start - w_end) / (steps * lr), the mean
    direction the client moved in. The buffer is a (P,) float32 array per client: the server
    stores it when it accepts the client's update and sends it with the client's next job,
    whichever worker computes it."""

    def __init__(self, beta: float = 0.5):
        if not 0.0 <= beta < 1.0:
            raise ValueError("beta must be in [0, 1)")
        self.beta = beta

    def init_state(self, client_id: int, weights: np.ndarray) -> np.ndarray:
        return np.zeros_like(weights, dtype=np.float32)

    def gradient(self, model, params, inputs, targets, ctx):
        g, loss = super().gradient(model, params, inputs, targets, ctx)
        m = torch.from_numpy(np.asarray(ctx.state, dtype=np.float32)).to(g.device)
        return g + self.beta * m, loss

    def finish(self, ctx, start, end, steps):
        return ((start - end) / (steps * ctx.lr)).to("cpu", torch.float32).numpy()

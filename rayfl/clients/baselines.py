"""Two classic client tasks of federated optimisation: FedProx and SCAFFOLD (PyTorch, no Ray).

- :class:`FedProx` (Li et al., "Federated optimization in heterogeneous networks", MLSys 2020):
  each local gradient gets the proximal term mu (w - w_t), which keeps a client near the model
  it received. No state.
- :class:`Scaffold` (Karimireddy et al., "SCAFFOLD: stochastic controlled averaging for federated
  learning", ICML 2020), option II: each local gradient is corrected by c - c_i, the server's
  control variate minus the client's, so that local steps follow the global gradient rather than
  the client's own. The client keeps c_i (its state, held by the server between its jobs) and
  reports delta c_i; the server's side is the ``scaffold`` rule
  (:mod:`rayfl.aggregation.scaffold`), which keeps c and broadcasts it to the clients, where it
  arrives as ``ctx.server["c"]``.

Both are shipped under ``client.task`` (``fedprox``, ``scaffold``:
:data:`~rayfl.clients.shipped.TASKS`) and build on the image classification task's other hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rayfl.clients.task import ClientTask, TaskContext
from rayfl.errors import RayflError
from rayfl.validation import check_real

SERVER_CONTROL = "c"  # the name the scaffold rule broadcasts c under (ctx.server["c"])
CONTROL_REPORT = "delta_c"  # the name clients report delta c_i under (step.reports["delta_c"])


def flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's current weights as one flat (P,) tensor, detached."""
    return torch.cat([p.detach().reshape(-1) for p in params])


class FedProx(ClientTask):
    """FedProx's local solver: SGD on F_i(w) + mu/2 ||w - w_t||^2, i.e. every local gradient is
    g + mu (w - w_t), with w_t the model the client received (``ctx.start``).

    With mu = 0 the task is the plain ``classification`` task, bit for bit (the proximal term is
    skipped, not added as zeros: g + 0 would turn a -0.0 into +0.0).

    Args:
        mu: the proximal coefficient, >= 0 (Li et al. try 0.001 to 1).
    """

    def __init__(self, mu: float = 0.01):
        self.mu = check_real(
            "client.task_params.mu", mu, low=0.0, fix="use a proximal coefficient >= 0, e.g. 0.01"
        )

    def gradient(
        self,
        model: nn.Module,
        params: Sequence[torch.Tensor],
        inputs: Any,
        targets: Any,
        ctx: TaskContext,
    ) -> tuple[torch.Tensor, float]:
        g, loss = super().gradient(model, params, inputs, targets, ctx)
        if self.mu == 0.0:
            return g, loss
        return g + self.mu * (flat(params) - ctx.start), loss


class Scaffold(ClientTask):
    """SCAFFOLD's client (Karimireddy et al. 2020, Algorithm 1, option II).

    - state: the client control variate c_i, a (P,) float32 numpy array, zeros before the
      client's first job;
    - every local gradient is g + c - c_i, with c = ``ctx.server["c"]``, the server control
      variate of the model the job is on (broadcast by the ``scaffold`` rule, which the
      preset's ``aggregation.rules`` must include);
    - after K local steps of size lr from x = ``start`` to y_i = ``end``, the new state is
      c_i+ = c_i - c + (x - y_i) / (K lr), and the report is ``{"delta_c": c_i+ - c_i}``, which
      the ``scaffold`` rule averages into c.
    """

    def __init__(self) -> None:
        # The job whose tensors are cached below: c - c_i is the same for all of a job's steps,
        # so it is made once per job rather than copied to the device at every step.
        self._job: TaskContext | None = None
        self._correction: torch.Tensor | None = None  # c - c_i on the device
        self._new_control: np.ndarray | None = None  # c_i+, from finish() for report()

    def init_state(self, client_id: int, weights: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(weights), dtype=np.float32)

    def gradient(
        self,
        model: nn.Module,
        params: Sequence[torch.Tensor],
        inputs: Any,
        targets: Any,
        ctx: TaskContext,
    ) -> tuple[torch.Tensor, float]:
        g, loss = super().gradient(model, params, inputs, targets, ctx)
        return g + self.correction(ctx, g.device), loss

    def finish(self, ctx: TaskContext, start: torch.Tensor, end: torch.Tensor, steps: int) -> Any:
        c = torch.from_numpy(server_control(ctx)).to(start.device)
        c_i = torch.from_numpy(client_control(ctx)).to(start.device)
        new = c_i - c + (start - end) / (steps * ctx.lr)
        self.remember(ctx)
        self._new_control = new.to("cpu", torch.float32).numpy()
        return self._new_control

    def report(
        self, ctx: TaskContext, start: torch.Tensor, end: torch.Tensor, steps: int
    ) -> dict[str, np.ndarray]:
        # finish() ran just before, on this job: its c_i+ is the state the server will store,
        # so delta c_i is taken from those very bytes.
        new = self._new_control if self._job is ctx else self.finish(ctx, start, end, steps)
        assert new is not None
        return {CONTROL_REPORT: (new - client_control(ctx)).astype(np.float32, copy=False)}

    def correction(self, ctx: TaskContext, device: torch.device) -> torch.Tensor:
        """c - c_i for the job ``ctx`` on ``device``, made on the job's first step."""
        if self._job is not ctx or self._correction is None:
            self.remember(ctx)
            difference = server_control(ctx) - client_control(ctx)
            self._correction = torch.from_numpy(difference).to(device)
        return self._correction

    def remember(self, ctx: TaskContext) -> None:
        """Makes ``ctx`` the cached job, dropping another job's tensors."""
        if self._job is not ctx:
            self._job, self._correction, self._new_control = ctx, None, None


def server_control(ctx: TaskContext) -> np.ndarray:
    """c, the server control variate the ``scaffold`` rule broadcast with the job's model, as a
    (P,) float32 array; a RayflError if the server sent none or one of another shape."""
    c = ctx.server.get(SERVER_CONTROL)
    if c is None:
        raise RayflError(
            f"client.task='scaffold': the server sent no control variate "
            f"(ctx.server has {sorted(ctx.server) or 'nothing'}): add the `scaffold` rule to "
            "aggregation.rules (a per-update rule: list it before the aggregator)"
        )
    c = np.asarray(c, dtype=np.float32)
    if c.shape != np.shape(ctx.weights):
        raise RayflError(
            f"client.task='scaffold': the server's control variate has shape {c.shape}, the "
            f"model {np.shape(ctx.weights)}: the `scaffold` rule must be built on this model"
        )
    return c


def client_control(ctx: TaskContext) -> np.ndarray:
    """c_i, the client's control variate (its state), as a (P,) float32 array."""
    return np.asarray(ctx.state, dtype=np.float32)

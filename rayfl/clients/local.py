"""The local training loop, once, for both engines (PyTorch, no Ray; AKAFL-RJ spec section 1,
incentive spec section 1).

A worker's :class:`LocalTrainer` holds the model, the client task (:mod:`rayfl.clients.task`) and
read-only views of the shared data, and runs a client's local SGD from the weights it received:
for each mini-batch of a *schedule*, the task's ``batch``, ``gradient`` (checked: (P,) float32)
and ``step``; then ``finish`` makes the client's new state. The engines differ only in the
schedule and in what they return:

- K-async (:meth:`LocalTrainer.update`): E = ``client.local_steps`` mini-batches of B samples,
  each drawn without replacement from ``seeding.rng(seed, BATCH, client, version)``. With E = 1
  the update is the mini-batch gradient g_i = grad F_i(w_v; xi_i), |xi_i| = B, itself; with E > 1
  the pseudo-gradient (w_v - w_v^E) / local_lr. The loss is the first mini-batch's, at w_v (the
  model the client received), which the server's L_t averages.
- synchronous rounds (:meth:`LocalTrainer.train`): E = ``selection.epochs`` epochs of shuffled
  mini-batches from ``seeding.rng(seed, ROUND_BATCH, client, round)``; the result is w_i after
  them, with the mean loss of their mini-batches.

Either is a pure function of (seed, client, version or round, the client's state), so the same
job gives the same bytes on any worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from rayfl import seeding
from rayfl.clients.shipped import TASK_FIELD
from rayfl.clients.state import pack, unpack
from rayfl.clients.task import ClientTask, TaskContext, checked_gradient, checked_report
from rayfl.models import set_flat


@dataclasses.dataclass(frozen=True)
class Trained:
    """What one run of the loop leaves."""

    grad: torch.Tensor  # the first mini-batch's gradient, (P,) float32 on the device
    losses: list[float]  # one per mini-batch
    end: torch.Tensor | None  # (P,) weights after the last step; None if it was skipped
    state: bytes | None  # the client's new state, packed (rayfl.clients.state)
    report: dict[str, np.ndarray] | None  # what the task reports to the server (checked)


class Result(NamedTuple):
    """One job's result as the engines take it."""

    vector: np.ndarray  # (P,) float32: K-async the update, rounds the trained weights
    loss: float  # K-async: the first mini-batch's loss; rounds: the mean over mini-batches
    state: bytes | None  # the client's new packed state (None: none)
    report: dict[str, np.ndarray] | None  # ClientTask.report's arrays (None: nothing)


class LocalTrainer:
    """Runs clients' local training on one worker: the model, the task and the data views.

    ``x``, ``y``, ``indices`` and ``offsets`` are the read-only arrays every worker on a node maps
    from the Ray object store (zero copy); only the sampled mini-batch is copied.
    """

    def __init__(
        self,
        task: ClientTask,
        task_name: str,
        model: nn.Module,
        x: np.ndarray,  # (n_train, ...) samples, e.g. (n, C, H, W) uint8
        y: np.ndarray,  # (n_train, ...) targets, e.g. (n,) int64
        indices: np.ndarray,  # partition CSR: concatenated sample indices
        offsets: np.ndarray,  # (N + 1,) int64
        *,
        batch_size: int,
        local_steps: int,
        local_lr: float,
        seed: int,
        device: torch.device | str = "cpu",
    ):
        self.task = task
        self.where = f"{TASK_FIELD}={task_name!r}"  # how errors name the task
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.params = list(self.model.parameters())
        self.size = sum(p.numel() for p in self.params)  # P
        self.x, self.y = x, y
        self.indices, self.offsets = indices, offsets
        self.batch_size = batch_size
        self.local_steps = local_steps
        self.local_lr = local_lr
        self.seed = seed
        # A task that keeps the default finish() and report() never looks at the weights after
        # training.
        self._finishes = type(task).finish is not ClientTask.finish
        self._reports = type(task).report is not ClientTask.report
        # The weights array the model holds now. Compared by identity (and kept referenced so
        # its id cannot be reused): the version number alone is not enough, since with
        # ``staleness: nominal`` a job's version differs from the weights it computes on.
        self._loaded: np.ndarray | None = None

    # --- the engines' two schedules -------------------------------------------------------------

    def update(
        self,
        client_id: int,
        version: int,
        weights: np.ndarray,
        state: bytes | None = None,
        server: Mapping[str, np.ndarray] | None = None,
    ) -> Result:
        """K-async: the update of ``client_id``'s job on ``version``, computed on ``weights``
        (w_version, or the newest model with ``staleness: nominal``) from the client's packed
        ``state`` and the rules' ``server`` broadcast of that version; the mini-batches depend on
        (seed, client_id, version) only. The vector is the (P,) float32 update."""
        schedule = self.schedule(client_id, version)
        ctx = self.context(client_id, version, weights, state, server)
        several = self.local_steps > 1
        run = self.run(ctx, schedule, last_step=self.last_step)
        vector = (ctx.start - run.end) / self.local_lr if several else run.grad
        return Result(vector.to("cpu", torch.float32).numpy(), run.losses[0], run.state, run.report)

    def schedule(self, client_id: int, version: int) -> list[np.ndarray]:
        """K-async: the sample indices of the job's E mini-batches, each min(B, n_i) samples
        drawn without replacement from (seed, BATCH, client_id, version)."""
        own = self.own(client_id)
        rng = seeding.rng(self.seed, seeding.BATCH, client_id, version)
        size = min(self.batch_size, own.size)
        # ascending reads are kinder to the page cache; the order does not change a mean
        return [
            np.sort(own[rng.choice(own.size, size=size, replace=False)])
            for _ in range(self.local_steps)
        ]

    @property
    def last_step(self) -> bool:
        """K-async: whether a job takes its last local step (see :meth:`run`)."""
        return self.local_steps > 1 or self._finishes or self._reports

    def train(
        self,
        client_id: int,
        t: int,
        weights: np.ndarray,
        epochs: int,
        state: bytes | None = None,
        server: Mapping[str, np.ndarray] | None = None,
    ) -> Result:
        """Synchronous rounds: ``epochs`` epochs of shuffled mini-batches from w(t) = ``weights``;
        the vector is w_i after them, the loss the mean of their mini-batches'."""
        own = self.own(client_id)
        rng = seeding.rng(self.seed, seeding.ROUND_BATCH, client_id, t)
        schedule: list[np.ndarray] = []
        for _ in range(epochs):
            order = own[rng.permutation(own.size)]
            step = self.batch_size
            schedule += [np.sort(order[s : s + step]) for s in range(0, order.size, step)]
        ctx = self.context(client_id, t, weights, state, server)
        run = self.run(ctx, schedule, last_step=True)
        assert run.end is not None
        w = run.end.to("cpu", torch.float32).numpy()
        return Result(w, float(np.mean(run.losses)), run.state, run.report)

    @torch.no_grad()
    def loss_at(self, weights: np.ndarray, take: np.ndarray) -> float:
        """The task's loss of ``weights`` on the samples ``take`` (eval mode, no gradient)."""
        self.load(weights)
        self.model.eval()
        return float(self.task.loss(self.model, *self.inputs(take)))

    # --- the loop -------------------------------------------------------------------------------

    def run(self, ctx: TaskContext, schedule: Sequence[np.ndarray], last_step: bool) -> Trained:
        """Local SGD from ``ctx.weights``: for each mini-batch of ``schedule`` (sample indices),
        the task's gradient and step. ``last_step=False`` skips the last step, whose result
        nothing would see (one K-async local step, a task with the default finish): that keeps
        the model on ``ctx.weights`` for the next job on them."""
        self.load(ctx.weights)
        self.model.train()
        task, params = self.task, self.params
        first: torch.Tensor | None = None
        losses: list[float] = []
        for e, take in enumerate(schedule):
            inputs, targets = self.inputs(take)
            grad, loss = task.gradient(self.model, params, inputs, targets, ctx)
            grad = checked_gradient(self.where, grad, self.size)
            losses.append(float(loss))
            if first is None:
                first = grad
            if last_step or e + 1 < len(schedule):
                task.step(params, grad, ctx.lr, ctx)
                self._loaded = None  # the model no longer holds ctx.weights
        assert first is not None, "a client without samples"  # partitions give each some
        end = torch.cat([p.detach().reshape(-1) for p in params]) if last_step else None
        state, report = self.outcome(ctx, end, len(schedule))
        return Trained(first, losses, end, state, report)

    def outcome(
        self, ctx: TaskContext, end: torch.Tensor | None, steps: int
    ) -> tuple[bytes | None, dict[str, np.ndarray] | None]:
        """The client's new packed state and its checked report after local training from
        ``ctx.start`` to ``end`` (flat weights; None if the last step was skipped) in
        ``steps`` steps: the task's ``finish`` and ``report``, where it overrides them."""
        state, report = ctx.state, None
        if end is not None:
            if self._finishes:
                state = self.task.finish(ctx, ctx.start, end, steps)
            if self._reports:
                report = checked_report(self.where, self.task.report(ctx, ctx.start, end, steps))
        return pack(self.where, state), report

    def context(
        self,
        client_id: int,
        version: int,
        weights: np.ndarray,
        state: bytes | None,
        server: Mapping[str, np.ndarray] | None = None,
    ) -> TaskContext:
        """The job's context: the client's state unpacked, or the task's initial one."""
        value = unpack(state) if state is not None else self.task.init_state(client_id, weights)
        return TaskContext(
            client_id, version, weights, value, self.local_lr, self.device, server or {}
        )

    def own(self, client_id: int) -> np.ndarray:
        """The client's sample indices (a view of the partition)."""
        return self.indices[self.offsets[client_id] : self.offsets[client_id + 1]]

    def inputs(self, take: np.ndarray) -> tuple[Any, Any]:
        """The task's (inputs, targets) of the samples ``take`` (copied out of the store)."""
        return self.task.batch(self.x[take], self.y[take], self.device)

    def load(self, weights: np.ndarray) -> None:
        """Puts ``weights`` in the model unless it holds exactly that array already."""
        if self._loaded is not weights:
            set_flat(self.model, weights)
            self._loaded = weights

"""The client side of synchronous rounds, run inside a client worker (incentive spec sections 1, 3, 5).

One :class:`RoundClients` lives in each :class:`~rayfl.clients.worker.ClientWorker` and answers
for the clients that worker serves. Everything private to a client stays in here: its data and
data size, its loss F_i(w(t)), its speed and training time, its costs, its sensitivities
(gamma_i, mu_i) and bargaining parameters (beta_i, delta_i). What it hands out is:

- to the selection (server side): :class:`~rayfl.selection.Bid`, :class:`~rayfl.selection.Offer`
  and :class:`~rayfl.selection.Response` (incentive), or :class:`~rayfl.selection.LossReport`
  (pow-d, which asks for the loss by design);
- after selection, to the aggregation: :class:`RoundUpdate` (the trained weights and the sample
  count FedAvg weights them by, section 1);
- to the simulator's records only, never to the selection: :meth:`RoundClients.utilities`, the
  clients' realised utilities u_i = x_i + e_i - phi_i (section 8 reports social welfare, which a
  real server could not compute).

A client's traits are drawn from ``seeding.rng(seed, INCENTIVE_POPULATION, client_id)`` and its
batches from ``seeding.rng(seed, ROUND_BATCH | ROUND_LOSS, client_id, round)``, so any worker
gives the same answers for the same client. No Ray here: the worker wraps it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rayfl import seeding
from rayfl.config import ExperimentConfig
from rayfl.models import set_flat
from rayfl.selection import (
    Bid,
    BidParams,
    ClientPrivate,
    LossReport,
    Offer,
    draw_client,
    make_bid,
)
from rayfl.selection.messages import Reply, bid_terms, client_replies, offers_by_client
from rayfl.speed import SpeedModel
from rayfl.training import UpdateComputer


@dataclasses.dataclass(frozen=True)
class RoundUpdate:
    """A selected client's result of round t: w_i after E local epochs from w(t)."""

    client_id: int
    weights: np.ndarray  # (P,) float32
    loss: float  # mean training loss over the E epochs' mini-batches
    num_samples: int  # |D_i|, FedAvg's weight (section 1)


class RoundClients:
    """Training, losses, bids and bargaining replies for the clients of one worker."""

    def __init__(self, computer: UpdateComputer, cfg: ExperimentConfig):
        self.c = computer
        self.seed = cfg.seed
        self.epochs = cfg.selection.epochs
        self.loss_batches = cfg.selection.loss_batches
        self.local_lr = cfg.client.local_lr
        inc = cfg.incentive
        self.delta_s = inc.delta_s
        self.bid_params = BidParams(self.epochs, inc.c_comp, inc.c_comm)
        self.population = inc.population()
        self.sizes = np.diff(computer.offsets)  # (N,) |D_i|
        n = self.sizes.size
        # The async clock's speed model: a_i in virtual time units per sample (section 3).
        self.speeds = SpeedModel(cfg.clock, n, work=1.0, model_bytes=0, seed=cfg.seed).speed
        # tau_ref = median_i E |D_i| a_i: a public normaliser, the same in every worker.
        self.tau_ref = float(np.median(self.epochs * self.sizes * self.speeds))
        self._private: dict[int, ClientPrivate] = {}
        self._round = -1
        self._losses: dict[int, float] = {}  # F_i(w(t)) of the current round

    # --- private state ------------------------------------------------------------------------

    def _me(self, client_id: int) -> ClientPrivate:
        p = self._private.get(client_id)
        if p is None:
            p = draw_client(
                client_id,
                self.seed,
                int(self.sizes[client_id]),
                float(self.speeds[client_id]),
                self.population,
            )
            self._private[client_id] = p
        return p

    def _new_round(self, t: int) -> None:
        if t != self._round:
            self._round = t
            self._losses.clear()

    def _own(self, client_id: int) -> np.ndarray:
        return self.c.indices[self.c.offsets[client_id] : self.c.offsets[client_id + 1]]

    @torch.no_grad()
    def _loss(self, client_id: int, t: int, weights: np.ndarray) -> float:
        """F_i(w(t)) on ``loss_batches`` seeded mini-batches of the client's data (cached)."""
        self._new_round(t)
        if client_id not in self._losses:
            own = self._own(client_id)
            rng = seeding.rng(self.seed, seeding.ROUND_LOSS, client_id, t)
            n = min(own.size, self.loss_batches * self.c.batch_size)
            take = np.sort(own[rng.choice(own.size, size=n, replace=False)])
            set_flat(self.c.model, weights)
            self.c._loaded = None  # the shared model no longer holds a K-async version
            self.c.model.eval()
            x = self.c.normalize(self.c.x[take])
            y = torch.from_numpy(self.c.y[take]).to(self.c.device)
            self._losses[client_id] = float(F.cross_entropy(self.c.model(x), y))
        return self._losses[client_id]

    # --- what the selection receives ------------------------------------------------------------

    def loss_reports(
        self, client_ids: Sequence[int], t: int, weights: np.ndarray
    ) -> list[LossReport]:
        """pow-d: each candidate's F_i(w(t)) (pow-d reveals the loss by design)."""
        return [LossReport(int(i), self._loss(int(i), t, weights)) for i in client_ids]

    def _bid(self, client_id: int, t: int, weights: np.ndarray) -> Bid:
        return make_bid(
            self._me(client_id), self._loss(client_id, t, weights), self.tau_ref, self.bid_params
        )

    def bids(self, client_ids: Sequence[int], cap: float, t: int, weights: np.ndarray) -> list[Bid]:
        """Each client's minimum reward R_{i,S}(t) under the announced cap (section 3).

        The bid does not depend on the cap: a client bids the same in every pass of a round.
        """
        return [self._bid(int(i), t, weights) for i in client_ids]

    def replies(
        self, offers: Sequence[Offer], cap: float, t: int, weights: np.ndarray
    ) -> list[Reply]:
        """Each addressed client's answers to the server's offers, up to its first Response
        (section 5; :func:`~rayfl.selection.messages.client_replies`).

        The client's bid is recomputed from (t, w(t)) if this worker did not take it (a worker
        restarted, or the client's calls moved to another worker): it is a pure function of
        them, so any worker answers the same.
        """
        return [
            r
            for i, mine in offers_by_client(offers).items()
            for r in client_replies(
                self._me(i), self._bid(i, t, weights).amount, cap, self.delta_s, mine
            )
        ]

    # --- after selection ---------------------------------------------------------------------------

    def train(self, client_ids: Sequence[int], t: int, weights: np.ndarray) -> list[RoundUpdate]:
        """E local epochs of mini-batch SGD from w(t) for each client (section 1)."""
        c = self.c
        out = []
        for i in client_ids:
            i = int(i)
            own = self._own(i)
            set_flat(c.model, weights)
            c.model.train()
            rng = seeding.rng(self.seed, seeding.ROUND_BATCH, i, t)
            losses = []
            for _ in range(self.epochs):
                order = own[rng.permutation(own.size)]
                for start in range(0, order.size, c.batch_size):
                    take = np.sort(order[start : start + c.batch_size])
                    g, loss = c._grad(
                        c.normalize(c.x[take]), torch.from_numpy(c.y[take]).to(c.device)
                    )
                    losses.append(loss)
                    with torch.no_grad():
                        offset = 0
                        for p in c.params:
                            k = p.numel()
                            p.sub_(self.local_lr * g[offset : offset + k].view_as(p))
                            offset += k
            w = torch.cat([p.detach().reshape(-1) for p in c.params]).to("cpu", torch.float32)
            c._loaded = None  # the shared model no longer holds any version
            out.append(RoundUpdate(i, w.numpy().copy(), float(np.mean(losses)), int(own.size)))
        return out

    def utilities(
        self, client_ids: Sequence[int], payments: Sequence[float], t: int, weights: np.ndarray
    ) -> list[float]:
        """Simulator's records only: u_i = x_i + e_i(t) - phi_i(t) (sections 3 and 8)."""
        out = []
        for i, x in zip(client_ids, payments, strict=True):
            e, phi = bid_terms(
                self._me(int(i)), self._loss(int(i), t, weights), self.tau_ref, self.bid_params
            )
            out.append(float(x) + e - phi)
        return out

"""The client side of synchronous rounds, run inside a client worker (incentive spec sections 1, 3, 5).

One :class:`RoundClients` lives in each :class:`~rayfl.clients.worker.ClientWorker` and answers
for the clients that worker serves. Everything private to a client stays in here: its data and
data size, its loss F_i(w(t)), its speed and training time, its costs, its sensitivities
(gamma_i, mu_i) and bargaining parameters (beta_i, delta_i). What it hands out is:

- to the selection (server side): the replies of the run's selector's query handlers
  (:meth:`RoundClients.query`; :mod:`rayfl.selection.api`), which see the client through a
  :class:`RoundClient` view. The server accepts only the reply types each handler declares:
  ``Bid``, ``Offer`` and ``Response`` for the incentive mechanism, ``LossReport`` for pow-d (which
  asks for the loss by design);
- after selection, to the aggregation: :class:`RoundUpdate` (the trained weights and the sample
  count FedAvg weights them by, section 1), with the client's new state if its task keeps one
  (packed bytes the server stores for the client's next round and never opens: it stands in for
  the client's own disk, :mod:`rayfl.clients.state`);
- to the simulator's records only, never to the selection: :meth:`RoundClients.utilities`, the
  clients' realised utilities u_i = x_i + e_i - phi_i (section 8 reports social welfare, which a
  real server could not compute).

A client's traits are drawn from ``seeding.rng(seed, INCENTIVE_POPULATION, client_id)`` and its
batches from ``seeding.rng(seed, ROUND_BATCH | ROUND_LOSS, client_id, round)``, so any worker
gives the same answers for the same client. Training and the loss are the client task's
(:mod:`rayfl.clients.local`, the loop the K-async engine uses too). No Ray here: the worker wraps
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfl import seeding
from rayfl.clients.local import LocalTrainer
from rayfl.config import ExperimentConfig
from rayfl.selection.api import Selector, by_client
from rayfl.selection.messages import BidParams, ClientPrivate, bid_terms
from rayfl.selection.population import draw_client
from rayfl.selection.shipped import build_selector
from rayfl.speed import SpeedModel


@dataclasses.dataclass(frozen=True)
class RoundUpdate:
    """A selected client's result of round t: w_i after E local epochs from w(t)."""

    client_id: int
    weights: np.ndarray  # (P,) float32
    loss: float  # mean training loss over the E epochs' mini-batches
    num_samples: int  # |D_i|, FedAvg's weight (section 1)
    # The client's new state, packed (rayfl.clients.state): opaque to the server, which keeps it
    # for the client's next round and never opens it; None when the task keeps none.
    state: bytes | None = None
    report: dict[str, np.ndarray] | None = None  # ClientTask.report: what rules read beside it


@dataclasses.dataclass(frozen=True, eq=False)
class RoundClient:
    """One client of this worker in round t, as the selector's query handlers see it
    (:class:`~rayfl.selection.api.ClientView`). It lives for one worker call."""

    _owner: RoundClients  # private: a handler sees one client, not its worker's others
    client_id: int
    t: int
    weights: np.ndarray  # (P,) float32 w(t)

    @property
    def cfg(self) -> ExperimentConfig:
        return self._owner.cfg

    @property
    def data_size(self) -> int:
        return int(self._owner.sizes[self.client_id])

    @property
    def reference_time(self) -> float:
        return self._owner.tau_ref

    def loss(self) -> float:
        return self._owner._loss(self.client_id, self.t, self.weights)

    def traits(self) -> ClientPrivate:
        return self._owner._me(self.client_id)


class RoundClients:
    """Training, the selector's queries and the realised utilities for one worker's clients."""

    def __init__(self, trainer: LocalTrainer, cfg: ExperimentConfig):
        self.trainer = trainer
        self.cfg = cfg
        self.seed = cfg.seed
        self.epochs = cfg.selection.epochs
        self.loss_batches = cfg.selection.loss_batches
        inc = cfg.incentive
        self.bid_params = BidParams(self.epochs, inc.c_comp, inc.c_comm)
        self.population = inc.population()
        self.sizes = np.diff(trainer.offsets)  # (N,) |D_i|
        n = self.sizes.size
        # The async clock's speed model: a_i in virtual time units per sample (section 3).
        self.speeds = SpeedModel(cfg.clock, n, work=1.0, model_bytes=0, seed=cfg.seed).speed
        # tau_ref = median_i E |D_i| a_i: a public normaliser, the same in every worker.
        self.tau_ref = float(np.median(self.epochs * self.sizes * self.speeds))
        self._private: dict[int, ClientPrivate] = {}
        self._round = -1
        self._losses: dict[int, float] = {}  # F_i(w(t)) of the current round
        self._selector: Selector | None = None  # the run's selector, for its query handlers

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

    def _loss(self, client_id: int, t: int, weights: np.ndarray) -> float:
        """F_i(w(t)), the task's loss on ``loss_batches`` seeded mini-batches of the client's
        data (cached for the round)."""
        self._new_round(t)
        if client_id not in self._losses:
            own = self.trainer.own(client_id)
            rng = seeding.rng(self.seed, seeding.ROUND_LOSS, client_id, t)
            n = min(own.size, self.loss_batches * self.trainer.batch_size)
            take = np.sort(own[rng.choice(own.size, size=n, replace=False)])
            self._losses[client_id] = self.trainer.loss_at(weights, take)
        return self._losses[client_id]

    # --- what the selection receives ------------------------------------------------------------

    def query(
        self, name: str, items: Sequence[Any], payload: Any, t: int, weights: np.ndarray
    ) -> list[list[Any]]:
        """The replies of the selector's handler ``name``, one list per client of ``items``
        (client ids, or messages with a ``client_id``), in the order of their first items.

        The selector is built from the run's config, as on the server
        (:func:`~rayfl.selection.shipped.build_selector`), once per worker. The server checks the
        replies' types against the handler's declared ones.
        """
        if self._selector is None:
            self._selector = build_selector(self.cfg)
        handle = self._selector.handlers[name].handle
        out = []
        for i, mine in by_client(items).items():
            got = handle(RoundClient(self, i, t, weights), mine, payload)
            out.append(got if isinstance(got, list) else [got])
        return out

    # --- after selection ---------------------------------------------------------------------------

    def train(
        self,
        client_ids: Sequence[int],
        t: int,
        weights: np.ndarray,
        states: dict[int, bytes] | None = None,
        server: dict[str, np.ndarray] | None = None,
    ) -> list[RoundUpdate]:
        """E local epochs of the task's local SGD from w(t) for each client (section 1), from
        its packed state in ``states`` if it has one and the rules' ``server`` broadcast
        (:meth:`LocalTrainer.train`)."""
        out = []
        for i in client_ids:
            i = int(i)
            state = states.get(i) if states else None
            w, loss, state, report = self.trainer.train(i, t, weights, self.epochs, state, server)
            size = int(self.sizes[i])
            out.append(RoundUpdate(i, w, loss, size, state, report))
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

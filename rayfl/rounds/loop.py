"""The server side of synchronous FedAvg rounds with client selection (incentive spec 1-9).

Round t, from w(t):

1. **select** C(t): ``random`` (M uniformly), ``pow-d`` (d candidates by |D_i|, the M with the
   highest reported loss; Cho, Wang and Joshi 2022) or ``incentive`` (cap, bids, candidates,
   cheapest first, decomposed alternating-offers bargaining, additional selection, carry-over:
   :func:`rayfl.selection.select_incentive`); M(t) = max(1, floor(K n(t)));
2. **train**: each selected client runs E local epochs from w(t) on its worker, in parallel;
3. **aggregate** (FedAvg, section 1): w(t+1) = sum_i |D_i| w_i / sum_i |D_i|;
4. **evaluate** w(t+1) and **record** the round (section 8): payments, leftover, carried budget,
   the server's utility u_S(t) = G_hat(t) - c_S |C(t)| - sum_i x_i, the clients' realised
   utilities, social welfare, the Nash product of the bargain and its APE against the exact NBS.

An empty candidate set (nobody bids under the cap) skips the round: no training, w(t+1) = w(t),
the whole budget carries over, and the round is recorded with ``skipped = True``.

What enters the server from the workers goes through :meth:`RoundServer._receive`, which counts
the message types per phase (``RoundServer.received``): during selection only ``Bid``, ``Offer``
and ``Response`` (incentive) or ``LossReport`` (pow-d, by its design); after selection
``RoundUpdate``; and, for the records only, the clients' realised utilities (floats the selection
never sees: a real server could not know them, the simulator reports them as the spec asks).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
import torch

from rayfl import seeding
from rayfl.clients.pool import WorkerPool
from rayfl.clients.rounds import RoundUpdate
from rayfl.clients.worker import SharedData
from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.evaluation import Evaluator
from rayfl.models import build_model, get_flat
from rayfl.rounds.records import empty_record, incentive_record
from rayfl.selection import (
    IncentiveRound,
    num_selected,
    select_incentive,
    select_pow_d,
    select_random,
)
from rayfl.speed import SpeedModel


class RoundServer:
    """The global model, the selector's state (carried budget) and evaluation of sync rounds."""

    def __init__(
        self, cfg: ExperimentConfig, data: SharedData, workers: Sequence[Any], sizes: np.ndarray
    ):
        self.cfg = cfg
        self.pool = WorkerPool(workers, data)  # re-runs the calls of a worker that died
        self.sizes = np.asarray(sizes, dtype=np.int64)  # (N,) |D_i|: pow-d's draw, the clock
        n = self.sizes.size
        # Simulation time only (sys/virtual_time): a round lasts as long as its slowest client.
        speed = SpeedModel(cfg.clock, n, work=1.0, model_bytes=0, seed=cfg.seed).speed
        self.train_time = cfg.selection.epochs * self.sizes * speed  # (N,) virtual time units
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        self.w = get_flat(self.model)  # (P,) float32, w(t)
        self.t = 0
        self.carried = 0.0  # r(t-1), incentive only
        self.virtual_time = 0.0
        self.received: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        # actor calls per phase (one per worker per message round, re-runs not counted)
        self.calls: collections.Counter[str] = collections.Counter()
        x_test, y_test = ray.get([data.x_test, data.y_test])
        self.evaluator = Evaluator(
            cfg, self.model, x_test, y_test, data.mean, data.std, torch.device("cpu")
        )
        self.accuracy = [self._evaluate()[0]]  # acc(w(t)) for t = 0, 1, ... (NaN if not evaluated)
        self.gains: list[float] = []  # G(t) for t = 1, 2, ...
        self.started_at = time.perf_counter()

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs, at a round boundary. Every random draw of round t
        derives from (seed, t) (and the clients' traits from (seed, client)), so no generator
        state is kept: a run resumed at round t ends on the same weights as an unbroken one."""
        return {
            "mode": "sync",
            "t": self.t,
            "w": self.w.copy(),
            "carried": self.carried,
            "virtual_time": self.virtual_time,
            "accuracy": list(self.accuracy),
            "gains": list(self.gains),
            "worker_failures": self.pool.failures,
            "received": {k: dict(v) for k, v in self.received.items()},
            "calls": dict(self.calls),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`checkpoint`'s state."""
        if state["w"].shape != self.w.shape:
            raise RayflError(
                f"the checkpoint's model has {state['w'].size} parameters, the config's "
                f"{self.w.size}: resume with the run's own config.yaml (do not --set model.*)"
            )
        self.t = int(state["t"])
        self.w = state["w"].astype(np.float32, copy=True)
        self.carried = float(state["carried"])
        self.virtual_time = float(state["virtual_time"])
        self.accuracy = list(state["accuracy"])
        self.gains = list(state["gains"])
        self.pool.failures = int(state["worker_failures"])
        for phase, counts in state["received"].items():
            self.received[phase].update(counts)
        self.calls.update(state["calls"])

    # --- messages from the workers --------------------------------------------------------------

    def _receive(
        self,
        phase: str,
        items: Sequence[Any],
        submit: Callable[[Any, list[Any]], Any],
        order: Sequence[int] | None = None,
        aligned: bool = False,
    ) -> list[Any]:
        """The one door through which worker replies reach the server; counts their types.

        ``submit(worker, part)`` makes one actor call for the part of ``items`` (client ids or
        offers) whose clients that worker serves: one call per worker, all in flight at once,
        re-run on a live worker if its worker dies (:meth:`WorkerPool.map`). With ``order``
        (client ids), messages come back in that order whatever the number of workers, so
        tie-breaks and the FedAvg sum do not depend on the pool size. With ``aligned`` (each call
        returns one result per item of its part, items distinct), results come back in the
        order of ``items``.
        """
        parts = self.pool.map(items, submit, key=_client_of)
        if aligned:
            of = {x: r for part, res in parts for x, r in zip(part, res, strict=True)}
            out = [of[x] for x in items]
        else:
            out = [msg for _, res in parts for msg in res]  # each call returns a list
        self.received[phase].update(type(x).__name__ for x in out)
        self.calls[phase] += len(parts)
        if order is not None:
            pos = {int(i): k for k, i in enumerate(order)}
            out.sort(key=lambda msg: pos.get(int(msg.client_id), len(pos)))
        return out

    def _evaluate(self) -> tuple[float, float]:
        return self.evaluator.evaluate(self.w)

    # --- one round ------------------------------------------------------------------------------

    def round(self) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """Runs round t; returns (metrics row, rounds.parquet record, updates rows)."""
        cfg, t = self.cfg, self.t
        started = time.perf_counter()
        m = num_selected(cfg.selection.k_fraction, self.sizes.size)
        w_ref = ray.put(self.w)  # w(t), once in the object store for every worker
        record: dict[str, Any] = empty_record(t, cfg.selection.kind, m)
        selected, payments, incentive = self._select(t, m, w_ref, record)  # --- C(t) ---
        updates = self._train(t, selected, payments, w_ref, record)  # --- E epochs, FedAvg ---
        acc, loss = self._evaluate_round(t, selected)  # --- w(t+1) ---
        self.accuracy.append(acc)
        self.t += 1
        u_server = self._utilities(selected, payments, record)  # --- section 8 ---
        record["accuracy"] = acc
        now = time.perf_counter()
        u_clients_sum = record["client_utility_sum"]
        row: dict[str, Any] = {
            "iteration": t,
            "train/loss": float(np.mean([u.loss for u in updates])) if updates else math.nan,
            "agg/k": int(selected.size),
            "sel/m": m,
            "sel/skipped": float(not selected.size),
            "util/server": u_server,
            "util/clients": u_clients_sum,
            "util/social_welfare": u_server + u_clients_sum,
            "sys/virtual_time": self.virtual_time,
            "sys/worker_failures": self.pool.failures,
            "sys/round_s": now - started,
            "sys/wall_s": now - self.started_at,
        }
        if not math.isnan(acc):
            row["eval/accuracy"] = acc
        if not math.isnan(loss):
            row["eval/loss"] = loss
        if incentive is not None:
            row.update(incentive.metrics())
        return row, record, _update_rows(t, updates)

    def _select(
        self, t: int, m: int, w_ref: Any, record: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray, IncentiveRound | None]:
        """C(t) by the configured selector: (selected client ids, payments, incentive round)."""
        cfg, n = self.cfg, self.sizes.size
        rng = seeding.rng(cfg.seed, seeding.SELECTION, t)
        if cfg.selection.kind == "random":
            return select_random(np.arange(n), m, rng), np.zeros(0), None
        if cfg.selection.kind == "pow-d":

            def losses(ids: Sequence[int]) -> list[Any]:
                return self._receive(
                    "selection",
                    ids,
                    lambda w, part: w.round_losses.remote(part, t, w_ref),
                    order=ids,
                )

            pow_d = select_pow_d(self.sizes, losses, cfg.selection.d, m, rng)
            record["candidates"] = pow_d.candidates.tolist()
            record["candidate_losses"] = pow_d.losses.tolist()
            return pow_d.selected, np.zeros(0), None

        def bids(ids: Sequence[int], cap: float) -> list[Any]:
            return self._receive(
                "selection",
                ids,
                lambda w, part: w.round_bids.remote(part, cap, t, w_ref),
                order=ids,
            )

        def replies(offers: Sequence[Any], cap: float) -> list[Any]:
            # One call per worker answers a window of offers for each of its clients.
            return self._receive(
                "selection", offers, lambda w, part: w.round_replies.remote(part, cap, t, w_ref)
            )

        incentive = select_incentive(
            np.arange(n),
            self.carried,
            cfg.incentive.budget,
            cfg.selection.k_fraction,
            bids,
            replies,
            cfg.incentive,
            rng,
        )
        self.carried = incentive.carried
        record.update(incentive_record(incentive))
        return incentive.selected, incentive.payments, incentive

    def _train(
        self,
        t: int,
        selected: np.ndarray,
        payments: np.ndarray,
        w_ref: Any,
        record: dict[str, Any],
    ) -> list[RoundUpdate]:
        """The selected clients train E local epochs from w(t) in parallel; w(t+1) is their
        FedAvg (section 1). Records the clients' realised utilities (simulator only)."""
        if not selected.size:
            return []
        ids = selected.tolist()
        updates = self._receive(
            "training", ids, lambda w, part: w.train_round.remote(part, t, w_ref), order=ids
        )
        weights = np.array([u.num_samples for u in updates], dtype=np.float64)
        weights /= weights.sum()
        w = np.zeros(self.w.size, dtype=np.float64)
        for p, u in zip(weights, updates, strict=True):
            w += p * u.weights
        self.w = w.astype(np.float32)
        self.virtual_time += float(self.train_time[selected].max())
        # Simulator's records only: the clients' realised utilities (random / pow-d: unpaid).
        paid = dict(zip(ids, payments.tolist(), strict=False))
        utilities = self._receive(
            "records",
            ids,
            lambda w, part: w.round_utilities.remote(
                part, [paid.get(i, 0.0) for i in part], t, w_ref
            ),
            aligned=True,
        )
        record["client_utilities"] = list(utilities)  # in selection order
        return updates

    def _evaluate_round(self, t: int, selected: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) of w(t+1): evaluated every eval.every rounds and at the end; a
        skipped round keeps w(t)'s accuracy; NaN when not evaluated."""
        if selected.size and ((t + 1) % self.cfg.eval.every == 0 or t + 1 == self.cfg.iterations):
            return self._evaluate()
        if not selected.size:  # skipped round: w(t+1) = w(t)
            return self.accuracy[-1], math.nan
        return math.nan, math.nan

    def _utilities(
        self, selected: np.ndarray, payments: np.ndarray, record: dict[str, Any]
    ) -> float:
        """Section 8's records of the round just run; returns the server's utility u_S(t).

        G(t): this round's realised gain; G_hat(t) = (G(t-1) + G(t-2)) / 2, the server's
        prediction of it from the two rounds before (0 before any; NaN gains are skipped).
        """
        inc = self.cfg.incentive
        past = [g for g in self.gains[-2:] if not math.isnan(g)]
        predicted = float(np.mean(past)) if past else 0.0
        gain = inc.gain_scale * (self.accuracy[-1] - self.accuracy[-2])
        self.gains.append(gain)
        u_server = predicted - inc.c_s * selected.size - float(math.fsum(payments))
        u_clients_sum = float(math.fsum(record["client_utilities"]))
        record.update(
            selected=[int(i) for i in selected],
            num_selected=int(selected.size),
            skipped=not selected.size,
            gain=gain,
            predicted_gain=predicted,
            server_utility=u_server,
            client_utility_sum=u_clients_sum,
            social_welfare=u_server + u_clients_sum,
        )
        return u_server


def _update_rows(t: int, updates: list[RoundUpdate]) -> list[dict[str, Any]]:
    """updates.parquet's rows of round t: one per trained client, weighted by |D_i|."""
    total = sum(u.num_samples for u in updates)
    return [
        {
            "iteration": t,
            "client_id": u.client_id,
            "version": t,
            "staleness": 0,
            "weight": u.num_samples / total,
            "loss": u.loss,
        }
        for u in updates
    ]


def _client_of(item: Any) -> int:
    """The client an item of a worker call is about: a client id, or a message's client_id."""
    return int(getattr(item, "client_id", item))

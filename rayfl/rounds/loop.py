"""The server side of synchronous FedAvg rounds with client selection (incentive spec 1-9).

Round t, from w(t):

1. **select** C(t) with the run's selector (:mod:`rayfl.selection.api`: ``select(context, state,
   ask) -> (selection, state)``): ``random`` (M uniformly), ``pow-d`` (d candidates by |D_i|, the
   M with the highest reported loss; Cho, Wang and Joshi 2022), ``incentive`` (cap, bids,
   candidates, cheapest first, decomposed alternating-offers bargaining, additional selection,
   carry-over: :func:`rayfl.selection.select_incentive`) or a user's selector;
   M(t) = max(1, floor(K n(t)));
2. **train**: each selected client runs E local epochs from w(t) on its worker, in parallel;
3. **aggregate** (FedAvg, section 1): w(t+1) = sum_i |D_i| w_i / sum_i |D_i|;
4. **evaluate** w(t+1) and **record** the round (section 8): payments, leftover, carried budget,
   the server's utility u_S(t) = G_hat(t) - c_S |C(t)| - sum_i x_i, the clients' realised
   utilities, social welfare, the Nash product of the bargain and its APE against the exact NBS.

An empty selection (the incentive mechanism's when nobody bids under the cap) skips the round:
no training, w(t+1) = w(t), and the round is recorded with ``skipped = True``.

What enters the server from the workers goes through :meth:`RoundServer._receive`, which counts
the message types per phase (``RoundServer.received``): during selection only the reply types
the selector's query handlers declare (``Bid``, ``Offer`` and ``Response`` for the incentive
mechanism, ``LossReport`` for pow-d, by its design; anything else is an error); after selection
``RoundUpdate``; and, for the records only, the clients' realised utilities (floats the selection
never sees: a real server could not know them, the simulator reports them as the spec asks).
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import ray
import torch

from rayfl import seeding
from rayfl.clients.pool import WorkerPool
from rayfl.clients.rounds import RoundUpdate
from rayfl.clients.state import ClientStates
from rayfl.clients.task import DataSpec
from rayfl.config import ExperimentConfig
from rayfl.errors import RayflError
from rayfl.evaluation import Evaluator
from rayfl.models import build_model, get_flat
from rayfl.rounds.aggregate import RoundAggregator
from rayfl.rounds.records import check_names, merged, round_record
from rayfl.selection.api import (
    RoundContext,
    Selection,
    by_client,
    check_asked,
    check_replies,
    checked_selection,
)
from rayfl.selection.selectors import num_selected
from rayfl.selection.shipped import build_selector
from rayfl.speed import SpeedModel
from rayfl.types import SharedData


class RoundServer:
    """The global model, the selector and its state, and evaluation of sync rounds."""

    def __init__(
        self, cfg: ExperimentConfig, data: SharedData, workers: Sequence[Any], sizes: np.ndarray
    ):
        self.cfg = cfg
        self.pool = WorkerPool(workers, data)  # re-runs the calls of a worker that died
        self.sizes = np.array(sizes, dtype=np.int64)  # (N,) |D_i|: public (selectors), the clock
        self.sizes.flags.writeable = False  # handed to the selector in every RoundContext
        n = self.sizes.size
        # Simulation time only (sys/virtual_time): a round lasts as long as its slowest client.
        speed = SpeedModel(cfg.clock, n, work=1.0, model_bytes=0, seed=cfg.seed).speed
        self.train_time = cfg.selection.epochs * self.sizes * speed  # (N,) virtual time units
        self.model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed)
        self.w = get_flat(self.model)  # (P,) float32, w(t)
        self.t = 0
        # FedAvg, or the config's rule chain and server optimizer (rayfl.rounds.aggregate)
        self.aggregator = RoundAggregator(cfg, self.w)
        self._agg_metrics: dict[str, float] = {}
        # The same selector the workers build for its query handlers; its state is explicit
        # (the incentive mechanism's carried budget r(t-1)) and checkpointed with the run.
        self.selector = build_selector(cfg)
        self.selector_state = self.selector.init(n)
        self.virtual_time = 0.0
        self.received: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        # actor calls per phase (one per worker per message round, re-runs not counted)
        self.calls: collections.Counter[str] = collections.Counter()
        x_test, y_test = ray.get([data.x_test, data.y_test])
        spec = DataSpec.of(x_test, data.num_classes, data.mean, data.std)
        self.evaluator = Evaluator(cfg, self.model, x_test, y_test, spec, torch.device("cpu"))
        # Per-client state (rayfl.clients.state): sent with each client's training, kept from
        # its RoundUpdate; empty for a task without state.
        self.client_states = ClientStates()
        # acc(w(t)) for t = 0, 1, ... (NaN if not evaluated). w(0)'s only reader is the first
        # round's gain G(0) = acc(w(1)) - acc(w(0)), which is known only if w(1) is evaluated.
        first_evaluated = cfg.eval.every == 1 or cfg.iterations == 1
        self.accuracy = [self._evaluate()[0] if first_evaluated else math.nan]
        self.gains: list[float] = []  # G(t) for t = 1, 2, ...
        self.started_at = time.perf_counter()

    # --- checkpoints ------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs, at a round boundary. Every random draw of round t
        derives from (seed, t) (and the clients' traits from (seed, client)), so no generator
        state is kept: a run resumed at round t ends on the same weights as an unbroken one. The
        selector's state is copied, so a later round cannot change a checkpoint not yet written;
        so are the clients' states (rayfl.clients.state)."""
        return {
            "mode": "sync",
            "t": self.t,
            "w": self.w.copy(),
            "selector_state": self._copied_selector_state(),
            "client_states": self.client_states.checkpoint(),
            **copy.deepcopy(self.aggregator.checkpoint()),
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
        if "selector_state" not in state:
            raise RayflError(
                "the checkpoint was written by an older rayfl (no selector state): run the "
                "experiment again"
            )
        self.t = int(state["t"])
        self.w = state["w"].astype(np.float32, copy=True)
        self.selector_state = _conform(
            state["selector_state"], self.selector_state, "selection.kind"
        )
        # checkpoints from before client tasks had none, and no task kept any then
        task = self.evaluator.task
        self.client_states.restore(
            state.get("client_states", {}), lambda i: task.init_state(i, self.w)
        )
        self.aggregator.restore(state, _conform)
        self.virtual_time = float(state["virtual_time"])
        self.accuracy = list(state["accuracy"])
        self.gains = list(state["gains"])
        self.pool.failures = int(state["worker_failures"])
        for phase, counts in state["received"].items():
            self.received[phase].update(counts)
        self.calls.update(state["calls"])

    def _copied_selector_state(self) -> Any:
        """The selector's state for a checkpoint, checked to be storable without pickle
        (:mod:`rayfl.runtime.safestate`), naming ``selection.kind`` if it is not."""
        from rayfl.runtime.safestate import UnsafeState, encode

        try:
            encode(self.selector_state, {}, "the selector's state")
        except UnsafeState as e:
            raise RayflError(f"selection.kind={self.cfg.selection.kind!r}: {e}") from None
        return copy.deepcopy(self.selector_state)

    # --- messages from the workers --------------------------------------------------------------

    def _receive(
        self,
        phase: str,
        items: Sequence[Any],
        submit: Callable[[Any, list[Any]], Any],
        order: Sequence[int] | None = None,
        aligned: bool = False,
        grouped: bool = False,
        work: Callable[[int], float] | None = None,
    ) -> list[Any]:
        """The one door through which worker replies reach the server; counts their types.

        ``submit(worker, part)`` makes one actor call for the part of ``items`` (client ids or
        offers) whose clients that worker serves: one call per worker, all in flight at once,
        re-run on a live worker if its worker dies (:meth:`WorkerPool.map`). Results come back
        in an order that does not depend on the number of workers, so tie-breaks and the FedAvg
        sum do not either: with ``order`` (client ids), messages are sorted into that order; with
        ``aligned`` (each call returns one result per item of its part, items distinct), in the
        order of ``items``; with ``grouped`` (each call returns one list per client of its part,
        in the order of the clients' first items), flattened in the order of the clients' first
        items. ``work`` (client id -> cost) spreads the clients evenly over the workers instead
        of keeping each on its own (:meth:`WorkerPool.map`).
        """
        parts = self.pool.map(items, submit, key=_client_of, work=work)
        if aligned:
            of = {x: r for part, res in parts for x, r in zip(part, res, strict=True)}
            out = [of[x] for x in items]
        elif grouped:
            lists = {c: r for part, res in parts for c, r in zip(by_client(part), res, strict=True)}
            out = [msg for c in by_client(items) for msg in lists[c]]
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
        selection = self._select(t, m, w_ref)  # --- C(t) ---
        updates, client_utilities = self._train(t, selection, w_ref)  # --- E epochs, FedAvg ---
        acc, loss = self._evaluate_round(t, selection.clients)  # --- w(t+1) ---
        self.accuracy.append(acc)
        self.t += 1
        outcome = self._outcome(selection, client_utilities)  # --- section 8 ---
        record = round_record(t, cfg.selection.kind, m, selection, outcome, acc)
        now = time.perf_counter()
        k = len(selection.clients)
        row: dict[str, Any] = {
            "iteration": t,
            "train/loss": float(np.mean([u.loss for u in updates])) if updates else math.nan,
            "agg/k": k,
            "sel/m": m,
            "sel/skipped": float(not k),
            "util/server": outcome["server_utility"],
            "util/clients": outcome["client_utility_sum"],
            "util/social_welfare": outcome["social_welfare"],
            "sys/virtual_time": self.virtual_time,
            "sys/worker_failures": self.pool.failures,
            "sys/round_s": now - started,
            "sys/wall_s": now - self.started_at,
        }
        if not math.isnan(acc):
            row["eval/accuracy"] = acc
        if not math.isnan(loss):
            row["eval/loss"] = loss
        row = merged(cfg.selection.kind, "metrics", row, selection.metrics)
        row.update(self._agg_metrics)  # the chain's agg/* and dp/* (none for plain FedAvg)
        return row, record, _update_rows(t, updates)

    def _select(self, t: int, m: int, w_ref: Any) -> Selection:
        """C(t) by the run's selector, from the server's public knowledge and what the clients'
        query handlers reply; checked (:func:`~rayfl.selection.api.checked_selection`)."""
        ctx = RoundContext(
            t=t,
            num_clients=int(self.sizes.size),
            m=m,
            sizes=self.sizes,
            rng=seeding.rng(self.cfg.seed, seeding.SELECTION, t),
            accuracy=tuple(self.accuracy),
            cfg=self.cfg,
        )
        ask = functools.partial(self._ask, t, w_ref)
        out = self.selector.select(ctx, self.selector_state, ask)
        selection, state = checked_selection(self.cfg.selection.kind, out, ctx)
        check_names(self.cfg.selection.kind, selection)
        self.selector_state = state
        return selection

    def _ask(
        self, t: int, w_ref: Any, query: str, items: Iterable[Any], payload: Any = None
    ) -> list[Any]:
        """The selector's ``ask``: its handler ``query`` answers for each addressed client on
        the client's worker (``ClientWorker.query``); only the handler's declared reply types
        pass (:func:`~rayfl.selection.api.check_replies`), grouped by client in the order of
        their first items."""
        kind = self.cfg.selection.kind
        handler = self.selector.handlers.get(query)
        if handler is None:
            raise RayflError(
                f"selection.kind={kind!r}: ask({query!r}) has no handler: register it in "
                f"Selector.handlers (registered: {', '.join(self.selector.handlers) or 'none'})"
            )
        items = list(items)
        check_asked(kind, query, items, int(self.sizes.size))
        replies = self._receive(
            "selection",
            items,
            lambda w, part: w.query.remote(query, part, payload, t, w_ref),
            grouped=True,
        )
        check_replies(kind, query, handler, replies)
        return replies

    def _train(
        self, t: int, selection: Selection, w_ref: Any
    ) -> tuple[list[RoundUpdate], list[float]]:
        """The selected clients train E local epochs from w(t) in parallel; w(t+1) is their
        FedAvg (section 1). Returns the updates and the clients' realised utilities, in
        selection order (simulator only)."""
        selected = selection.clients
        self._agg_metrics = {}
        if not selected.size:
            return [], []
        ids = selected.tolist()
        states = self.client_states
        broadcast = self.aggregator.broadcast()  # the rules' message with w(t), e.g. SCAFFOLD's c
        server = {} if broadcast is None else {"server": ray.put(broadcast)}

        def train(worker: Any, part: list[int]) -> Any:
            blobs = states.blobs(part)  # only clients that have state: none for most tasks
            extra = {"states": blobs} if blobs else {}
            return worker.train_round.remote(part, t, w_ref, **extra, **server)

        # Training is a pure function of (seed, client, t, w(t), state) and uses no worker cache:
        # spread the clients by data size (E epochs each), not by id, so no worker gets most.
        sizes = self.sizes
        updates = self._receive("training", ids, train, order=ids, work=lambda i: float(sizes[i]))
        for u in updates:  # every trained client's update is averaged: keep its new state
            states.accept(u.client_id, u.state)
        self.w, self._agg_metrics = self.aggregator.aggregate(t, self.w, updates)
        self.virtual_time += float(self.train_time[selected].max())
        # Simulator's records only: the clients' realised utilities (unpaid clients: x_i = 0).
        paid = dict(zip(ids, np.asarray(selection.payments).tolist(), strict=False))
        utilities = self._receive(
            "records",
            ids,
            lambda w, part: w.round_utilities.remote(
                part, [paid.get(i, 0.0) for i in part], t, w_ref
            ),
            aligned=True,
        )
        return updates, list(utilities)

    def _evaluate_round(self, t: int, selected: np.ndarray) -> tuple[float, float]:
        """(accuracy, loss) of w(t+1): evaluated every eval.every rounds and at the end; a
        skipped round keeps w(t)'s accuracy; NaN when not evaluated."""
        if selected.size and ((t + 1) % self.cfg.eval.every == 0 or t + 1 == self.cfg.iterations):
            return self._evaluate()
        if not selected.size:  # skipped round: w(t+1) = w(t)
            return self.accuracy[-1], math.nan
        return math.nan, math.nan

    def _outcome(self, selection: Selection, client_utilities: list[float]) -> dict[str, Any]:
        """Section 8's numbers of the round just run: its realised and predicted gain, the
        server's utility u_S(t) = G_hat(t) - c_S |C(t)| - sum_i x_i, the clients' realised
        utilities and the social welfare.

        G(t): this round's realised gain; G_hat(t) = (G(t-1) + G(t-2)) / 2, the server's
        prediction of it from the two rounds before (0 before any; NaN gains are skipped).
        """
        inc = self.cfg.incentive
        past = [g for g in self.gains[-2:] if not math.isnan(g)]
        predicted = float(np.mean(past)) if past else 0.0
        gain = inc.gain_scale * (self.accuracy[-1] - self.accuracy[-2])
        self.gains.append(gain)
        paid = float(math.fsum(np.asarray(selection.payments).tolist()))
        u_server = predicted - inc.c_s * len(selection.clients) - paid
        u_clients_sum = float(math.fsum(client_utilities))
        return {
            "client_utilities": client_utilities,
            "client_utility_sum": u_clients_sum,
            "gain": gain,
            "predicted_gain": predicted,
            "server_utility": u_server,
            "social_welfare": u_server + u_clients_sum,
        }


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


def _conform(state: Any, template: Any, field: str) -> Any:
    """A state read from a checkpoint, with the classes of the running code's ``template``."""
    from rayfl.runtime.safestate import UnsafeState, conform

    try:
        return conform(state, template, field)
    except UnsafeState as e:
        raise RayflError(str(e)) from None

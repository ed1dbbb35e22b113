"""SCAFFOLD's server side (Karimireddy et al., ICML 2020): the server control variate c.

The clients run the ``scaffold`` task (:class:`rayfl.clients.baselines.Scaffold`): each corrects
its local gradients by c - c_i and reports delta c_i = c_i+ - c_i beside its update. The
``scaffold`` rule keeps c in its state, folds the reports into it once the server applies the
iteration's step (Algorithm 1 line 17 with |S| = K: c <- c + (K / N) mean_j delta c_j), and
broadcasts it to every client with the model (``Rule.broadcast``: ``ctx.server["c"]``). The model
itself moves as with FedAvg: the rule leaves the updates alone, so the rest of the chain and the
server lr eta_g make w_{t+1} (SCAFFOLD's global step size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from rayfl.aggregation.base import Rule, Step
from rayfl.errors import RayflError

CONTROL_REPORT = "delta_c"  # what the scaffold task reports (step.reports["delta_c"])
SERVER_CONTROL = "c"  # what the rule broadcasts (ctx.server["c"])
WHERE = "aggregation.rules.scaffold"


class ScaffoldState(NamedTuple):
    """The scaffold rule's state: the server control variate c, (P,) float32."""

    c: np.ndarray


def scaffold() -> Rule:
    """SCAFFOLD's server control variate c (Karimireddy et al. 2020, Algorithm 1).

    Stage ``updates``; it changes no field of the Step (weights, updates and direction are the
    rest of the chain's business). ``update`` checks that the clients reported
    ``delta_c`` (K, P): the preset's ``client.task`` must be ``scaffold``. ``commit`` sets
    c <- c + (K / N) mean_j delta c_j = c + sum_j delta c_j / N, N = ``step.num_clients``, which
    keeps c the mean of all N clients' c_i (each starts at 0 like c). ``broadcast`` sends
    ``{"c": c}`` to every client with the model.

    ``commit`` runs only when the server applies the step. In synchronous rounds that is every
    round. In K-async mode judgement may keep the previous model: c then stays as it was,
    although the server still stores the clients' new c_i (their updates were accepted), so c
    drifts from the mean of the c_i by the dropped reports' sum / N; rejected and dropped jobs
    leave both alone. The reports are summed over all K updates the step came from, also those
    a per-update selection rule gave weight 0: those clients' c_i moved too.

    State: :class:`ScaffoldState`, c = 0 from ``init``.
    """

    def init(params: np.ndarray) -> ScaffoldState:
        return ScaffoldState(np.zeros(np.shape(params), dtype=np.float32))

    def update(step: Step, state: ScaffoldState, params: np.ndarray) -> tuple[Step, ScaffoldState]:
        reported_deltas(step, state.c.shape)  # fail on this iteration, not at commit
        population(step)
        return step, state

    def commit(step: Step, state: ScaffoldState, params: np.ndarray) -> ScaffoldState:
        deltas = reported_deltas(step, state.c.shape)
        # sum_j delta c_j / N (= (K / N) mean_j), accumulated in float64 for K up to N
        change = deltas.sum(axis=0, dtype=np.float64) / population(step)
        return ScaffoldState((state.c + change).astype(np.float32))

    def broadcast(state: ScaffoldState) -> dict[str, np.ndarray]:
        return {SERVER_CONTROL: state.c}

    return Rule(init, update, "updates", commit, broadcast)


def reported_deltas(step: Step, shape: tuple[int, ...]) -> np.ndarray:
    """The clients' delta c_j, ``step.reports["delta_c"]`` as (K, P); a RayflError if the
    clients did not send them (they do not run the ``scaffold`` task) or sent another shape."""
    deltas = step.reports.get(CONTROL_REPORT)
    if deltas is None:
        raise RayflError(
            f"{WHERE}: the clients reported no {CONTROL_REPORT!r} "
            f"(reports: {sorted(step.reports) or 'none'}): set client.task=scaffold, whose "
            "clients keep the control variates c_i this rule averages"
        )
    deltas = np.asarray(deltas)
    # One row per update the step came from; not checked against ``updates``, whose rows a
    # user's per-update rule may have replaced.
    if deltas.shape[1:] != tuple(shape) or deltas.ndim != 1 + len(shape):
        raise RayflError(
            f"{WHERE}: the clients' {CONTROL_REPORT!r} has shape {deltas.shape}, not "
            f"(K, {', '.join(map(str, shape))}) (one row per update, the model's size): "
            "client.task must be scaffold"
        )
    return deltas


def population(step: Step) -> int:
    """N, the number of clients c averages over; a RayflError if the engine did not say."""
    if step.num_clients <= 0:
        raise RayflError(
            f"{WHERE}: the step does not say how many clients there are (num_clients="
            f"{step.num_clients}); c averages over all N clients, so the engine must set it"
        )
    return step.num_clients


SCAFFOLD_RULES: dict[str, Callable[..., Rule]] = {"scaffold": scaffold}
"""The shipped SCAFFOLD rules, by name."""

"""The contract of aggregation rules and server optimizers (optax-style: small transforms with
explicit state).

One K-async iteration hands the K_t arriving updates to a chain of rules as a :class:`Step`, and
the chain's result to a server optimizer that makes the candidate model w_{t+1}:

    per-update rules  ->  aggregator  ->  direction rules  ->  lr rule  ->  server optimizer
    (weights, clips)     (g_t)            (on g_t)            (eta_t)      (w_t, g_t -> w_{t+1})

A :class:`Rule` is ``init(params) -> state`` and ``update(step, state, params) -> (step, state)``
where ``params`` is the current global model w_t ((P,) float32, read-only). A rule reads the
fields it needs and returns a new ``Step`` (``dataclasses.replace``) with the fields it changes;
it never mutates its input, with one exception: when ``step.updates_writable`` is set (the
K-async server's fresh stack of the arriving updates, which nothing else holds), the chain's
first rule may overwrite ``updates`` in place (WKAFL's momentum adds g_{t-1} into it: one (K, P)
allocation and pass fewer); the chain clears the flag for every later rule. Its ``stage`` says
where in the chain it may stand, which :func:`check_stages` enforces; ``commit(step, state,
params) -> state``, if given, is called once the server has applied the iteration's step to the
model (not when judgement kept the previous model), with the final Step and the new model: that
is how a rule keeps g_{t-1} (WKAFL's momentum) in its own state. WKAFL, AKAFL, ... are
recipes: ordered lists of rules (``recipes.py``).

A :class:`ServerOptimizer` is ``init(params) -> state`` and ``apply(step, state, params) ->
(new_params, state)``; plain SGD, ``w_t - step.lr * step.direction``, is one among others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from rayfl.aggregation import arrays

BACKENDS = ("numpy", "torch")
"""Where a chain's big arrays live: numpy arrays on the host, or torch tensors on the server's
device (``aggregation.backend``; rayfl.aggregation.backend)."""

STAGES = ("updates", "aggregate", "direction", "lr")
"""Where a rule stands in a chain, in this order:

- ``updates``: per-update transforms (weights, clips, selection; they read and replace
  ``updates`` / ``weights`` / ``estimate``);
- ``aggregate``: at most one rule that sets ``direction`` g_t (without one, g_t is the weighted
  sum of the updates);
- ``direction``: transforms of g_t (noise, scaling);
- ``lr``: at most one rule that sets the learning rate eta_t.
"""


@dataclasses.dataclass(frozen=True)
class Step:
    """What flows through the rule chain for one iteration t."""

    iteration: int  # t
    updates: np.ndarray  # (K, P) float32: the client updates g_i (rules may replace them)
    staleness: np.ndarray  # (K,) int64: tau_i = t - v_i
    losses: np.ndarray  # (K,) float64: the mini-batch losses the clients reported
    weights: np.ndarray  # (K,) float64: aggregation weights, start uniform 1/K, sum to 1
    lr: float  # eta_t, starts at the config's base learning rate
    clients: np.ndarray | None = None  # (K,) int64: which client sent each update
    estimate: np.ndarray | None = None  # (P,) g_est, set by `estimate`-type rules
    direction: np.ndarray | None = None  # (P,) g_t, set by the aggregator
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # per-iteration records
    # What the clients' tasks reported beside their updates (ClientTask.report), stacked by
    # name: reports["delta_c"] is (K, ...) with row j from update j. Empty when none report.
    reports: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    seed: int = 0  # the run's seed: a rule's random draws come from seeding.rng(seed, ...)
    num_clients: int = 0  # N, the population the updates came from (0: unknown)
    # The clients' local models w_i (K, P) float32, made on first call: K-async
    # w_{v_i} - client.local_lr * u_i (the model the update moved to), rounds the trained
    # weights. For mixing rules (FedAsync); None where the engine cannot make them.
    local_models: Callable[[], np.ndarray] | None = None
    # True: ``updates`` was made for this step and nothing outside the chain holds it, so the
    # chain's first rule may write into it (see the module's docstring); False for later rules.
    updates_writable: bool = False

    def with_metrics(self, **values: float) -> Step:
        """Returns a copy with ``values`` merged into ``metrics`` (keys like ``agg/selected``)."""
        return dataclasses.replace(self, metrics={**self.metrics, **values})


def _no_commit(step: Step, state: Any, params: np.ndarray) -> Any:
    return state


class Rule(NamedTuple):
    """A composable aggregation transform with explicit state.

    ``broadcast(state) -> {name: array}``, if given, is what the rule sends to every client with
    the model it makes (SCAFFOLD's server control variate c): the engines call it after each
    commit (and on the initial state) and a client's task reads it as ``ctx.server[name]`` for
    the version or round its job is on. Arrays only (they go through the object store once per
    version)."""

    init: Callable[[np.ndarray], Any]  # init(w_0) -> state
    update: Callable[[Step, Any, np.ndarray], tuple[Step, Any]]  # (step, state, w_t)
    stage: str = "updates"  # one of STAGES
    commit: Callable[[Step, Any, np.ndarray], Any] = _no_commit  # (final step, state, w_{t+1})
    broadcast: Callable[[Any], Mapping[str, np.ndarray]] | None = None  # state -> to clients
    # The array backends its update and commit accept (rayfl.aggregation.backend): "numpy"
    # (host arrays) and/or "torch" (tensors on the server's device, via rayfl.aggregation.arrays).
    backends: tuple[str, ...] = ("numpy",)


class ServerOptimizer(NamedTuple):
    """Makes w_{t+1} from w_t and the chain's final Step (its direction g_t and lr eta_t)."""

    init: Callable[[np.ndarray], Any]  # init(w_0) -> state
    apply: Callable[[Step, Any, np.ndarray], tuple[np.ndarray, Any]]  # -> (w_{t+1}, state)
    backends: tuple[str, ...] = ("numpy",)  # as Rule.backends


def chain(*rules: Rule) -> Rule:
    """Composes rules left to right; the state is the tuple of the rules' states.

    The chain's ``update`` ends by setting ``direction`` (the weighted sum of the updates if no
    rule did), so that every commit and the server optimizer see g_t.
    """

    def init(params: np.ndarray) -> tuple[Any, ...]:
        return tuple(r.init(params) for r in rules)

    def update(step: Step, state: tuple[Any, ...], params: np.ndarray) -> tuple[Step, tuple]:
        new_states = []
        for rule, s in zip(rules, state, strict=True):
            step, s = rule.update(step, s, params)
            new_states.append(s)
            if step.updates_writable:  # only the first rule may write into the server's stack
                step = dataclasses.replace(step, updates_writable=False)
        return dataclasses.replace(step, direction=final_direction(step)), tuple(new_states)

    def commit(step: Step, state: tuple[Any, ...], params: np.ndarray) -> tuple[Any, ...]:
        return tuple(r.commit(step, s, params) for r, s in zip(rules, state, strict=True))

    backends = common_backends(rules)
    senders = [(i, r.broadcast) for i, r in enumerate(rules) if r.broadcast is not None]
    if not senders:
        return Rule(init, update, "updates", commit, None, backends)

    def broadcast(state: tuple[Any, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, send in senders:
            out.update(send(state[i]))
        return out

    return Rule(init, update, "updates", commit, broadcast, backends)


def common_backends(parts: Sequence[Rule | ServerOptimizer]) -> tuple[str, ...]:
    """The backends every one of ``parts`` accepts, in the order of :data:`BACKENDS`."""
    return tuple(b for b in BACKENDS if all(b in p.backends for p in parts))


def final_direction(step: Step) -> np.ndarray:
    """g_t: ``step.direction`` if a rule set it, else the weighted sum of the updates. (P,) float32."""
    if step.direction is not None:
        return step.direction
    if arrays.is_tensor(step.updates):
        return arrays.weighted_sum(step.weights, step.updates)
    w = np.asarray(step.weights, dtype=np.float32)
    return (w @ step.updates).astype(np.float32, copy=False)


def start_step(
    iteration: int,
    updates: np.ndarray,
    staleness: Sequence[int] | np.ndarray,
    losses: Sequence[float] | np.ndarray,
    lr: float,
    clients: Sequence[int] | np.ndarray | None = None,
    **context: Any,
) -> Step:
    """Builds the first ``Step`` of an iteration with uniform weights and ``train/loss`` recorded;
    ``context`` sets the other fields (``reports``, ``seed``, ``num_clients``, ``local_models``,
    ``weights``)."""
    k = updates.shape[0]
    losses_arr = np.asarray(losses, dtype=np.float64)
    tau = np.asarray(staleness, dtype=np.int64)
    step = Step(
        iteration=iteration,
        updates=updates,
        staleness=tau,
        losses=losses_arr,
        weights=np.full(k, 1.0 / k),
        lr=float(lr),
        clients=None if clients is None else np.asarray(clients, dtype=np.int64),
        metrics={
            "train/loss": float(losses_arr.mean()),
            "agg/staleness_min": float(tau.min()),
            "agg/staleness_mean": float(tau.mean()),
            "agg/staleness_max": float(tau.max()),
        },
    )
    return dataclasses.replace(step, **context) if context else step

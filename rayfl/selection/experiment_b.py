"""Experiment B (paper Table 3; spec section 9): the bargained allocation vs the exact NBS.

For each |C| in {2, 5, 8, 11} and each of ``repetitions`` draws: |C| clients bargain with the server
(spec section 5), and the separable Nash product of the agreed prices is compared with that of the
exact NBS x_i* = (bid_i + cap_i) / 2 (section 7): APE = |NP(x) - NP(x*)| / NP(x*) * 100 %.

Draws, from ``seeding.rng(seed, EXPERIMENT_B, |C|)`` in this order:

- the clients' private (delta_i, beta_i) from the population (default, narrow or wide;
  :data:`~rayfl.selection.population.POPULATIONS`), shape (repetitions, |C|);
- caps R_{S,i} = budget / |C| (the budget of one round, default 10.0, split over |C| = M slots) and
  bids R_{i,S} ~ U(0, cap), shape (repetitions, |C|).

The same generator serves every population, so the populations are compared on common random
numbers (the uniforms behind delta_i and beta_i are the same draws, rescaled). The separable APE
does not depend on the caps and bids at all: each client's factor of NP(x) / NP(x*) is
4 U (1 - U) with U its normalised share of the surplus, which the bargaining fixes from the
concession steps alone. The caps and bids matter only for the Nash products' magnitudes.

Client strategies: ``"scaled"`` is the spec's Delta_i = beta_i * delta_S / delta_i;
``"reciprocal"`` (the spec's optional last bullet) is a client that matches the server's observed
concession, Delta_i = Delta_S (it learns Delta_S from the server's first two offers; its first
ask, T_i(0) = 1, does not depend on it), which lands on the midpoint whatever the population.

Run ``python -m rayfl.selection.experiment_b`` for the markdown table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayfl import seeding
from rayfl.errors import ConfigError
from rayfl.selection.bargaining import (
    BargainParams,
    BargainResult,
    ape_from_log,
    bargain,
    bargain_steps,
    check_server_params,
)
from rayfl.selection.population import (
    PopulationParams,
    draw_bargaining_traits,
    population_params,
)
from rayfl.validation import check_int, check_real

PAPER_APE: dict[int, float] = {2: 0.0003, 5: 0.0040, 8: 0.0148, 11: 0.0369}
"""The paper's Table 3 APE (%) per |C|."""

STRATEGIES = ("scaled", "reciprocal")


def run_experiment_b(
    sizes: Sequence[int] = (2, 5, 8, 11),
    repetitions: int = 500,
    population: str | PopulationParams = "default",
    seed: int = 0,
    beta_s: float = 0.002,
    delta_s: float = 0.95,
    *,
    strategy: str = "scaled",
    budget: float = 10.0,
    max_steps: int = BargainParams.max_steps,
) -> list[dict[str, Any]]:
    """Bargained vs exact-NBS Nash products and their APE, one row per |C| (see module doc).

    Args:
        sizes: the |C| values (paper: 2, 5, 8, 11).
        repetitions: draws per |C| (paper: 500).
        population: a name in ``POPULATIONS`` (default, narrow, wide) or PopulationParams.
        seed: the run's seed.
        beta_s: the server's concession rate beta_S.
        delta_s: the server's discount factor delta_S.
        strategy: ``"scaled"`` (the spec) or ``"reciprocal"``.
        budget: the round's budget split into the |C| caps.
        max_steps: offers at steps 0..max_steps.

    Returns:
        One dict per |C| with ``clients``, ``repetitions``, ``population``, ``strategy``,
        ``np_bargain_mean`` and ``np_nbs_mean`` (mean separable Nash products),
        ``ape_mean``, ``ape_std`` (sample std, ddof=1; 0 for one repetition) and ``ape_max`` in %,
        ``steps_mean`` (mean A_i), ``agreed_fraction`` and ``paper_ape`` (NaN if not in Table 3).
    """
    params = population_params(population)
    name = population if isinstance(population, str) else "custom"
    beta_s, delta_s = check_server_params(beta_s, delta_s)
    repetitions, budget = _checked_options(repetitions, budget, strategy)
    rows = []
    for c in sizes:
        c = check_int("experiment_b.sizes", c, low=1, fix="use client counts >= 1")
        rng = seeding.rng(seed, seeding.EXPERIMENT_B, c)
        delta_i, beta_i = draw_bargaining_traits(rng, (repetitions, c), params)
        cap = np.full((repetitions, c), budget / c)
        bid = cap * rng.uniform(0.0, 1.0, size=(repetitions, c))
        if strategy == "scaled":
            res = bargain(cap, bid, delta_s, beta_s, delta_i, beta_i, max_steps=max_steps)
        else:
            res = bargain_steps(cap, bid, beta_s, beta_s, delta_s, delta_i, max_steps=max_steps)
        rows.append(
            {
                "clients": c,
                "repetitions": repetitions,
                "population": name,
                "strategy": strategy,
                **_nash_product_stats(cap, bid, res),
                "paper_ape": PAPER_APE.get(c, math.nan),
            }
        )
    return rows


def _checked_options(repetitions: Any, budget: Any, strategy: Any) -> tuple[int, float]:
    """(repetitions, budget) of :func:`run_experiment_b`, checked, once the strategy is known."""
    repetitions = check_int(
        "experiment_b.repetitions", repetitions, low=1, fix="use e.g. 500 repetitions"
    )
    budget = check_real(
        "incentive.budget", budget, low=0.0, low_open=True, fix="use a budget > 0, e.g. 10.0"
    )
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"experiment_b.strategy={strategy!r} is not known: use one of {', '.join(STRATEGIES)}"
        )
    return repetitions, budget


def _nash_product_stats(cap: np.ndarray, bid: np.ndarray, res: BargainResult) -> dict[str, float]:
    """The Nash products and APE over the repetitions (rows) that agreed with every client."""
    ok = res.agreed.all(axis=1)  # a breakdown leaves the repetition without an allocation
    surplus = cap - bid
    with np.errstate(divide="ignore", invalid="ignore"):
        log_np = np.sum(np.log(res.price - bid) + np.log(cap - res.price), axis=1)
    log_nbs = np.sum(2.0 * np.log(0.5 * surplus), axis=1)
    errs = np.asarray(ape_from_log(log_np[ok], log_nbs[ok]))
    return {
        "np_bargain_mean": float(np.mean(np.exp(log_np[ok]))) if ok.any() else math.nan,
        "np_nbs_mean": float(np.mean(np.exp(log_nbs[ok]))) if ok.any() else math.nan,
        "ape_mean": float(errs.mean()) if errs.size else math.nan,
        "ape_std": float(errs.std(ddof=1)) if errs.size > 1 else 0.0,
        "ape_max": float(errs.max()) if errs.size else math.nan,
        "steps_mean": float(res.steps.mean()),
        "agreed_fraction": float(ok.mean()),
    }


def _pct(v: float) -> str:
    """An APE in %, 4 decimals like the paper; tiny non-zero values in scientific notation."""
    if math.isnan(v):
        return "n/a"
    return f"{v:.4f}" if v == 0 or v >= 1e-4 else f"{v:.1e}"


def format_experiment_b(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A markdown table: |C|, the paper's APE, then each labelled result's APE mean ± std (%).

    Args:
        results: label -> rows of :func:`run_experiment_b` (same ``sizes`` in each).

    >>> rows = [{"clients": 2, "ape_mean": 0.01, "ape_std": 0.02, "paper_ape": 0.0003}]
    >>> print(format_experiment_b({"default": rows}))
    | \\|C\\| | paper APE % | default APE % |
    |---|---|---|
    | 2 | 0.0003 | 0.0100 ± 0.0200 |
    """
    labels = list(results)
    head = "| \\|C\\| | paper APE % | " + " | ".join(f"{k} APE %" for k in labels) + " |"
    lines = [head, "|" + "---|" * (2 + len(labels))]
    first = results[labels[0]] if labels else []
    for j, row in enumerate(first):
        cells = [str(row["clients"]), _pct(row.get("paper_ape", math.nan))]
        for k in labels:
            r = results[k][j]
            cells.append(f"{_pct(r['ape_mean'])} ± {_pct(r['ape_std'])}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Prints the sensitivity table of spec section 9 (three populations and the reciprocal client)."""
    results = {name: run_experiment_b(population=name) for name in ("default", "narrow", "wide")}
    results["default, reciprocal"] = run_experiment_b(strategy="reciprocal")
    print(format_experiment_b(results))


if __name__ == "__main__":
    main()

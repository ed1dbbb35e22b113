"""``rayfl reproduce incentive --ablation``: where the incentive mechanism's gain comes from.

Issue 15: experiment A ties the incentive mechanism with pow-d. The ablation adds its parts one
at a time, each arm an override of the ``incentive`` preset (:data:`ARMS`), beside random and
pow-d, over the same seeds and rounds as experiment A:

1. bids only: the M cheapest bidders under the cap R_S / M, each paid its own bid, nothing
   more (``incentive.bargaining``, ``incentive.additional_selection``, ``incentive.carry_over``
   all false);
2. + bargaining (spec section 5): the price is bargained by alternating offers;
3. + additional selection (section 6): open slots are offered again under the pooled leftover;
4. + carry-over: the unspent budget enters the next round's, i.e. the full mechanism.

Reported per arm (:func:`format_ablation`): t75 and final accuracy as in experiment A, and per
round the clients trained, the budget R(t), what was paid, what was not, and what was carried.
A report, not a tuning: every other constant is the preset's.

Writes ``ablation.md`` (returned), ``ablation_runs.csv`` and the run folders under ``runs/``.
Each finished run's numbers also go to a results store (:class:`ResultsStore`; by default
``docs/results/incentive_ablation`` under the current directory, the committed results when run
in the repository's root; with ``quick``, ``OUTPUT/results``): a run stored there for the same
config is not run again, so a stopped ablation continues where it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rayfl.reproduce import machine_description
from rayfl.reproduce.akafl import config_sha256, resolved_config
from rayfl.reproduce.incentive import Arm, _experiment_a_on_ray, _mean_std, _write_runs_csv

DEFAULT_RESULTS = Path("docs") / "results" / "incentive_ablation"
"""The results store of a full ablation, relative to the current directory."""


class ResultsStore:
    """One JSON per finished run, ``<root>/<arm>/seed<k>-R<rounds>.json``: the record the table
    reads and the sha256 of the run's resolved config (placement fields left out), so a run
    stored for another config is run again."""

    def __init__(self, root: Path, rounds: int):
        self.root, self.rounds = Path(root), rounds

    def _path(self, arm: str, seed: int) -> Path:
        folder = arm.replace("+", "plus-")  # no '+' in folder names
        return self.root / folder / f"seed{seed}-R{self.rounds}.json"

    def _sha(self, arm: Arm, seed: int) -> str:
        overrides = (*arm.overrides, f"seed={seed}", f"iterations={self.rounds}")
        return config_sha256(resolved_config(arm.preset, overrides))

    def get(self, arm: Arm, seed: int) -> dict[str, Any] | None:
        path = self._path(arm.name, seed)
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        return stored["record"] if stored["config_sha256"] == self._sha(arm, seed) else None

    def put(self, arm: Arm, record: dict[str, Any]) -> None:
        path = self._path(arm.name, record["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = {"format": 1, "config_sha256": self._sha(arm, record["seed"]), "record": record}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored, indent=1) + "\n")
        tmp.replace(path)  # the JSON appears whole or not at all


def _switches(bargaining: bool, additional_selection: bool, carry_over: bool) -> tuple[str, ...]:
    """The ``--set`` overrides of the incentive preset that turn the mechanism's parts on/off."""
    on = {True: "true", False: "false"}
    return (
        f"incentive.bargaining={on[bargaining]}",
        f"incentive.additional_selection={on[additional_selection]}",
        f"incentive.carry_over={on[carry_over]}",
    )


ARMS: tuple[Arm, ...] = (
    Arm("random", "random"),
    Arm("pow-d", "pow-d"),
    Arm("bids-only", "incentive", _switches(False, False, False)),
    Arm("+bargaining", "incentive", _switches(True, False, False)),
    Arm("+additional-selection", "incentive", _switches(True, True, False)),
    Arm("+carry-over", "incentive", _switches(True, True, True)),  # the full mechanism
)
"""The ablation's arms in table order; each incentive arm adds one part to the one above."""

_PER_ROUND = (
    ("clients_per_round", "clients / round"),
    ("budget_per_round", "budget R(t) / round"),
    ("paid_per_round", "paid / round"),
    ("unspent_per_round", "unspent / round"),
    ("carried_per_round", "carried / round"),
)
"""The per-round columns of the table: (run record key, header)."""

_RUN_KEYS = (
    "arm",
    "seed",
    "t75",
    "final_accuracy",
    *(key for key, _ in _PER_ROUND),
    "total_payments",
    "rounds_skipped",
    "wall_s",
    "run_dir",
)


def reproduce_ablation(
    output: Path,
    *,
    quick: bool,
    seeds: int | None,
    address: str | None,
    progress: bool | None,
    iterations: int | None = None,
    results: Path | None = None,
) -> Path:
    """Runs :data:`ARMS` into ``output`` and returns the path of ``ablation.md``; seeds and
    rounds as experiment A's (15 and 60; ``quick``: 2 and 6). Runs found in the results store
    (``results``, default :data:`DEFAULT_RESULTS`, ``OUTPUT/results`` with ``quick``) for the
    same config are read, not run."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    n_seeds = seeds if seeds is not None else (2 if quick else 15)
    rounds = iterations if iterations is not None else (6 if quick else 60)
    if results is None:
        results = output / "results" if quick else DEFAULT_RESULTS
    store = ResultsStore(results, rounds)
    by_name = {arm.name: arm for arm in ARMS}
    started = time.perf_counter()
    runs, resources = _experiment_a_on_ray(
        output,
        n_seeds,
        rounds,
        address,
        progress,
        ARMS,
        stored=store.get,
        store=lambda record: store.put(by_name[record["arm"]], record),
    )
    wall = time.perf_counter() - started
    _write_runs_csv(output / "ablation_runs.csv", runs, _RUN_KEYS)
    command = (
        f"rayfl reproduce incentive --ablation{' --quick' if quick else ''}"
        f"{f' --seeds {seeds}' if seeds is not None else ''}"
        f"{f' --iterations {iterations}' if iterations is not None else ''}"
    )
    lines = [
        "# Incentive mechanism: ablation (issue 15)",
        "",
        f"`{command}`; machine: {machine_description(resources)}.",
        f"{rounds} rounds x {n_seeds} seeds x {len(ARMS)} arms in {wall / 60:.1f} min.",
        "",
        format_ablation(runs, rounds, ARMS),
        "",
    ]
    path = output / "ablation.md"
    path.write_text("\n".join(lines))
    return path


def _mean_std_or_na(values: Sequence[float | None]) -> str:
    """Mean ± std of the finite values; n/a when there are none (random and pow-d pay nothing)."""
    v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
    return _mean_std(v[np.isfinite(v)].tolist())


def format_ablation(runs: Sequence[dict[str, Any]], rounds: int, arms: Sequence[Arm]) -> str:
    """Markdown: one row per arm (in ``arms``' order; arms without runs are left out), mean ±
    std over seeds of t75 (over the seeds that reach 75 %), the final accuracy and the per-round
    means of each run (clients, budget, payments, unspent, carried); then each arm's overrides.
    """
    header = ["arm", "seeds", "t75 (rounds)", "reached 75 %", "final accuracy %"]
    header += [title for _, title in _PER_ROUND]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm.name]
        if not rs:
            continue
        t75 = [r["t75"] for r in rs if r["t75"] is not None]
        cells = [
            arm.name,
            str(len(rs)),
            _mean_std(t75),
            f"{len(t75)}/{len(rs)}",
            _mean_std([100 * r["final_accuracy"] for r in rs]),
        ]
        cells += [_mean_std_or_na([r.get(key) for r in rs]) for key, _ in _PER_ROUND]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_legend(rounds, arms)]
    return "\n".join(lines)


def _legend(rounds: int, arms: Sequence[Arm]) -> list[str]:
    """What the columns and the arms are."""
    lines = [
        f"t75: rounds until the test accuracy first reached 75 %, mean ± std over the seeds that "
        f"reached it within {rounds} rounds; final: after round {rounds}. Per-round columns: the "
        "mean over a run's rounds, then mean ± std over seeds; budget R(t) = R_S + carried, paid "
        "= the sum of the payments, unspent = R(t) - paid (carried over, or dropped without "
        "carry-over); n/a: the selector has no budget.",
        "",
        "Arms (presets with `--set` overrides; each incentive arm adds one part to the one "
        "above, and +carry-over is the full mechanism, experiment A's `incentive`):",
        "",
    ]
    for arm in arms:
        sets = " ".join(f"`{o}`" for o in arm.overrides) or "as shipped"
        lines.append(f"- {arm.name}: preset `{arm.preset}`, {sets}")
    return lines

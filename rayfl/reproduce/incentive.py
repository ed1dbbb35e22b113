"""``rayfl reproduce incentive``: the incentive paper's experiments A and B (spec section 9).

- **Experiment A** (paper Fig. 3 and Table 2): random vs pow-d vs incentive selection, 60 rounds,
  15 seeds, presets ``random``, ``pow-d`` and ``incentive`` (sync FedAvg; the setting is
  explained in ``rayfl/presets/random.yaml``). Every run is one Ray task driving
  :func:`rayfl.run` with one client worker of its own; as many runs are in flight
  as the cluster has room for workers (``client.num_cpus`` each), so the runs pack the cluster.
  Reported: t75 (rounds until the test accuracy first reaches 75 %) and the final accuracy, mean
  and standard deviation over seeds, and the accuracy-vs-round curves with a +-1 std band.
- **Experiment B** (paper Table 3): Nash product of the bargain vs the exact NBS, APE for
  |C| in {2, 5, 8, 11}, 500 repetitions (:mod:`rayfl.selection.experiment_b`), for the spec's
  default, narrow and wide client populations and the reciprocal client.

Writes ``incentive.md`` (the main table, returned), ``experiment_a.md``, ``experiment_b.md``,
``experiment_a_runs.csv``, ``experiment_a.png``, ``experiment_b.png`` and the run folders under
``runs/``. ``--quick``: 6 rounds, 2 seeds, 20 repetitions (a couple of minutes; CI).

``--ablation`` runs the mechanism's ablation instead (issue 15; random, pow-d and the incentive
mechanism with its parts switched off one by one): :mod:`rayfl.reproduce.incentive_ablation`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rayfl.config import load_config
from rayfl.reproduce import machine_description
from rayfl.rounds.records import rounds_to

SELECTORS = ("random", "pow-d", "incentive")
PAPER_A: dict[str, tuple[float | None, float | None]] = {
    "random": (None, None),
    "pow-d": (16.0, 79.25),
    "incentive": (8.0, 80.19),
}
"""The paper's Table 2: (t75 in rounds, final accuracy in %) per selector; random not given."""
POPULATIONS_B = ("default", "narrow", "wide")


def reproduce(
    output: Path,
    *,
    quick: bool,
    seeds: int | None,
    address: str | None,
    progress: bool | None,
    iterations: int | None = None,
) -> Path:
    """Runs experiments A and B into ``output`` and returns the path of ``incentive.md``;
    ``iterations`` sets experiment A's number of rounds (default 60, quick 6). The mechanism's
    ablation is :mod:`rayfl.reproduce.incentive_ablation` (``--ablation``)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    n_seeds = seeds if seeds is not None else (2 if quick else 15)
    rounds = iterations if iterations is not None else (6 if quick else 60)
    repetitions = 20 if quick else 500
    started = time.perf_counter()
    runs, resources = _experiment_a_on_ray(output, n_seeds, rounds, address, progress)
    wall_a = time.perf_counter() - started
    _write_runs_csv(output / "experiment_a_runs.csv", runs)
    table_a = format_experiment_a(runs, rounds)
    plot_experiment_a(runs, output / "experiment_a.png")

    t_b = time.perf_counter()
    results_b = experiment_b_results(repetitions)
    wall_b = time.perf_counter() - t_b
    from rayfl.selection.experiment_b import format_experiment_b

    table_b = format_experiment_b(results_b)
    plot_experiment_b(results_b, output / "experiment_b.png")

    (output / "experiment_a.md").write_text(table_a + "\n")
    (output / "experiment_b.md").write_text(table_b + "\n")
    command = (
        f"rayfl reproduce incentive{' --quick' if quick else ''}"
        f"{f' --seeds {seeds}' if seeds is not None else ''}"
        f"{f' --iterations {iterations}' if iterations is not None else ''}"
    )
    timing = (
        f"Experiment A: {rounds} rounds x {n_seeds} seeds x 3 selectors in "
        f"{wall_a / 60:.1f} min; experiment B: {repetitions} repetitions per |C| in {wall_b:.1f} s."
    )
    path = output / "incentive.md"
    path.write_text(
        _report(
            command,
            machine_description(resources),
            timing,
            table_a,
            table_b,
            targets(runs, results_b["default"]),
        )
    )
    return path


def _experiment_a_on_ray(
    output: Path,
    n_seeds: int,
    rounds: int,
    address: str | None,
    progress: bool | None,
    arms: Sequence[Arm] | None = None,
    **store: Any,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Experiment A's runs, or those of ``arms`` (under ``output / "runs"``; ``store``: the
    results store hooks of :func:`run_arms`), and the Ray cluster's resources; Ray is started if
    none runs at ``address``, and then shut down again."""
    from rayfl.runtime.session import ensure_ray

    started_ray = ensure_ray(address)
    try:
        import ray

        resources = ray.cluster_resources()
        if arms is None:
            runs = run_experiment_a(output / "runs", n_seeds, rounds, progress=progress)
        else:
            runs = run_arms(output / "runs", arms, n_seeds, rounds, progress=progress, **store)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return runs, resources


def _report(
    command: str,
    machine: str,
    timing: str,
    table_a: str,
    table_b: str,
    target_lines: Sequence[str],
) -> str:
    """``incentive.md``: how it was made, both experiments' tables and figures, the targets."""
    lines = [
        "# Incentive mechanism: experiments A and B",
        "",
        f"`{command}`; machine: {machine}.",
        timing,
        "Setting: presets `random`, `pow-d`, `incentive` (MNIST, `paper` partition: 100 clients "
        "with 1-2 classes and 20-200 samples each; MLP 784-200-10; M = 10 per round; E = 1, "
        "B = 32, lr 0.05).",
        "",
        "## Experiment A (paper Table 2, Fig. 3)",
        "",
        table_a,
        "",
        "![accuracy vs round](experiment_a.png)",
        "",
        "## Experiment B (paper Table 3): APE of the bargain's Nash product vs the exact NBS",
        "",
        table_b,
        "",
        "![APE vs |C|](experiment_b.png)",
        "",
        "## Targets (issue 4)",
        "",
        *target_lines,
        "",
    ]
    return "\n".join(lines)


# --- experiment A ------------------------------------------------------------------------------


class Arm(NamedTuple):
    """One configuration of a comparison: a preset with overrides, named for the tables."""

    name: str  # the tables' label and the run folders' prefix
    preset: str
    overrides: tuple[str, ...] = ()  # ``--set`` style ``key.path=value``


def _one_run(
    arm: Arm, seed: int, rounds: int, run_dir: str, dataset: Any, num_workers: int
) -> dict[str, Any]:
    """One run of an arm (inside a Ray task): the round driver, then its headline numbers."""
    from rayfl.api import run

    cfg = load_config(
        arm.preset,
        [
            *arm.overrides,
            f"seed={seed}",
            f"iterations={rounds}",
            f"client.num_workers={num_workers}",
        ],
    )
    res = run(cfg, output=run_dir, progress=False, dataset=dataset)
    metrics = res.metrics.to_pandas()
    acc = metrics["eval/accuracy"].to_numpy(dtype=float)
    return {
        "arm": arm.name,
        "selector": cfg.selection.kind,
        "seed": seed,
        "t75": rounds_to(acc),
        "final_accuracy": float(acc[-1]),
        "accuracy": acc.tolist(),
        "total_payments": res.summary.get("total_payments"),
        "rounds_skipped": res.summary.get("rounds_skipped"),
        "wall_s": res.summary.get("driver_wall_s"),
        "run_dir": str(res.run_dir),
        **per_round_means(metrics),
    }


def per_round_means(metrics: Any) -> dict[str, float]:
    """Means over a run's rounds (a metrics.parquet frame): clients trained, and the incentive
    budget R(t), what was paid, what was not (R(t) - payments: carried over, or dropped without
    carry-over) and what was carried. NaN where the selector has no budget (random, pow-d)."""

    def mean(column: str) -> float:
        return float(metrics[column].mean()) if column in metrics else math.nan

    budget, paid = mean("incentive/budget"), mean("incentive/payments")
    return {
        "clients_per_round": mean("agg/k"),
        "budget_per_round": budget,
        "paid_per_round": paid,
        "unspent_per_round": budget - paid,
        "carried_per_round": mean("incentive/carried"),
    }


def run_experiment_a(
    root: Path,
    seeds: int,
    rounds: int,
    *,
    selectors: Sequence[str] = SELECTORS,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Experiment A: every (selector, seed) run, each selector's preset as it ships."""
    arms = [Arm(s, s) for s in selectors]
    return run_arms(root, arms, seeds, rounds, progress=progress, desc="experiment A")


def run_arms(
    root: Path,
    arms: Sequence[Arm],
    seeds: int,
    rounds: int,
    *,
    progress: bool | None = None,
    desc: str = "runs",
    stored: Callable[[Arm, int], dict[str, Any] | None] = lambda arm, seed: None,
    store: Callable[[dict[str, Any]], None] = lambda record: None,
) -> list[dict[str, Any]]:
    """Every (arm, seed) run under ``root``, ``floor(cluster CPUs / client.num_cpus)`` at a time,
    sorted by arm then seed.

    Each run is a Ray task (0 CPUs: it only drives) whose single client worker holds the CPU (or
    GPU fraction) of ``client.num_cpus`` / ``client.num_gpus``; MNIST is put in the object store
    once for all of them. A run that ``stored(arm, seed)`` has a record of is not run again;
    ``store(record)`` is called as each run finishes (a results store, so a stopped command
    continues where it was).
    """
    import ray
    from tqdm.auto import tqdm

    from rayfl.runtime.data import share_dataset

    base = load_config(arms[0].preset, list(arms[0].overrides))
    dataset = share_dataset(base)
    resources = ray.cluster_resources()
    slots = max(1, math.floor(resources.get("CPU", 1.0) / max(base.client.num_cpus, 1e-9)))
    if base.client.num_gpus > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0.0) / base.client.num_gpus))
    task = ray.remote(num_cpus=0)(_one_run)
    todo = [(a, seed) for seed in range(seeds) for a in arms]
    results = [r for r in (stored(a, seed) for a, seed in todo) if r is not None]
    done_before = {(r["arm"], r["seed"]) for r in results}
    todo = [(a, seed) for a, seed in todo if (a.name, seed) not in done_before]
    pending: dict[Any, tuple[Arm, int]] = {}
    bar = tqdm(
        total=len(todo),
        desc=desc,
        unit="run",
        disable=not (progress if progress is not None else os.isatty(2)),
    )
    while todo or pending:
        while todo and len(pending) < max(1, slots):
            arm, seed = todo.pop(0)
            ref = task.remote(arm, seed, rounds, str(root / f"{arm.name}-seed{seed}"), dataset, 1)
            pending[ref] = (arm, seed)
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pending.pop(ref)
            results.append(ray.get(ref))
            store(results[-1])
            bar.update(1)
    bar.close()
    order = {a.name: i for i, a in enumerate(arms)}
    return sorted(results, key=lambda r: (order[r["arm"]], r["seed"]))


def _mean_std(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "n/a"
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return f"{v.mean():.2f} ± {std:.2f}"


def format_experiment_a(runs: Sequence[dict[str, Any]], rounds: int) -> str:
    """Markdown: t75 and final accuracy (mean ± std over seeds) beside the paper's numbers."""
    lines = [
        "| selector | seeds | t75 (rounds) | reached 75 % | paper t75 | final accuracy % | "
        "paper final % |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in dict.fromkeys(r["selector"] for r in runs):
        rs = [r for r in runs if r["selector"] == s]
        t75 = [r["t75"] for r in rs if r["t75"] is not None]
        paper_t, paper_acc = PAPER_A.get(s, (None, None))
        lines.append(
            f"| {s} | {len(rs)} | {_mean_std(t75)} | {len(t75)}/{len(rs)} | "
            f"{'n/a' if paper_t is None else f'{paper_t:g}'} | "
            f"{_mean_std([100 * r['final_accuracy'] for r in rs])} | "
            f"{'n/a' if paper_acc is None else f'{paper_acc:.2f}'} |"
        )
    lines.append("")
    lines.append(
        f"t75: rounds completed when the test accuracy (10,000 images) first reached 75 %, mean "
        f"± std over the seeds that reached it within {rounds} rounds; final: after round "
        f"{rounds}."
    )
    return "\n".join(lines)


def plot_experiment_a(runs: Sequence[dict[str, Any]], path: Path) -> Path:
    """Accuracy vs round, mean over seeds with a ±1 std band, one curve per selector."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for s in dict.fromkeys(r["selector"] for r in runs):
        acc = np.array([r["accuracy"] for r in runs if r["selector"] == s], dtype=float) * 100
        x = np.arange(1, acc.shape[1] + 1)
        mean, std = np.nanmean(acc, axis=0), np.nanstd(acc, axis=0)
        (line,) = ax.plot(x, mean, label=f"{s} ({acc.shape[0]} seeds)")
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.axhline(75, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Experiment A: accuracy vs round (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


_RUN_KEYS_A = (
    "selector",
    "seed",
    "t75",
    "final_accuracy",
    "total_payments",
    "rounds_skipped",
    "wall_s",
    "run_dir",
)


def _write_runs_csv(
    path: Path, runs: Sequence[dict[str, Any]], keys: Sequence[str] = _RUN_KEYS_A
) -> None:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(runs)


# --- experiment B ------------------------------------------------------------------------------


def experiment_b_results(repetitions: int) -> dict[str, list[dict[str, Any]]]:
    """APE rows per population (default, narrow, wide) and for the reciprocal client."""
    from rayfl.selection.experiment_b import run_experiment_b

    out = {p: run_experiment_b(repetitions=repetitions, population=p) for p in POPULATIONS_B}
    out["default, reciprocal"] = run_experiment_b(repetitions=repetitions, strategy="reciprocal")
    return out


def plot_experiment_b(results: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """APE (%) vs |C| per population, log scale, with the paper's Table 3."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    first = next(iter(results.values()))
    sizes = [r["clients"] for r in first]
    ax.plot(sizes, [r["paper_ape"] for r in first], "k--o", label="paper")
    for label, rows in results.items():
        ape = np.array([r["ape_mean"] for r in rows])
        ax.plot(sizes, np.where(ape > 0, ape, np.nan), marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("|C| (clients bargaining)")
    ax.set_ylabel("APE (%), mean over repetitions")
    ax.set_title("Experiment B: Nash product of the bargain vs the exact NBS")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def targets(runs: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]]) -> list[str]:
    """Plain yes/no lines for the issue's targets, computed from the results."""

    def mean(s: str, key: str) -> float:
        v = [r[key] for r in runs if r["selector"] == s and r[key] is not None]
        return float(np.mean(v)) if v else math.inf if key == "t75" else math.nan

    def reached(s: str) -> str:
        rs = [r for r in runs if r["selector"] == s]
        return f"{sum(r['t75'] is not None for r in rs)}/{len(rs)}"

    t = {s: mean(s, "t75") for s in SELECTORS}
    f = {s: mean(s, "final_accuracy") for s in SELECTORS}
    yes = {True: "yes", False: "**no**"}
    lines = [
        f"- A: incentive reaches 75 % in no more rounds than pow-d (mean t75 {t['incentive']:.2f}"
        f" vs {t['pow-d']:.2f}; reached {reached('incentive')} vs {reached('pow-d')}): "
        f"{yes[t['incentive'] <= t['pow-d']] if math.isfinite(t['pow-d']) or math.isfinite(t['incentive']) else 'n/a (neither reached 75 %)'}",
        f"- A: incentive ends at least as accurate as pow-d ({100 * f['incentive']:.2f} % vs "
        f"{100 * f['pow-d']:.2f} %): {yes[f['incentive'] >= f['pow-d']]}",
        f"- A: both beat random (t75 {t['random']:.2f}, final {100 * f['random']:.2f} %): "
        f"{yes[max(t['incentive'], t['pow-d']) < t['random'] and min(f['incentive'], f['pow-d']) > f['random']]}",
    ]
    for r in rows_b:
        lines.append(
            f"- B, |C| = {r['clients']}: APE {r['ape_mean']:.4f} % vs the paper's "
            f"{r['paper_ape']:.4f} %: {yes[r['ape_mean'] <= r['paper_ape']]}"
        )
    return lines

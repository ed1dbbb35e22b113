"""The baselines against their papers' claims: the comparison tables of docs/algorithms.md.

Three groups, each over seeds 0, 1, 2 (mean and std), each run's small results committed under
``docs/results/baselines/<group>/<arm>-s<seed>.json`` as it finishes. The command is resumable:
a run whose result file exists for the same overrides is not run again, so a stopped session
continues where it left off.

- ``sync``: FedAvg, FedAvgM, FedAdagrad, FedAdam, FedYogi, FedProx, SCAFFOLD on the ``fedavg``
  preset's setting (MNIST, Dirichlet(0.1) over 100 clients, M = 10, E = 5 local epochs, the MLP),
  each preset as shipped: rounds to 80, 90 and 95 % test accuracy, accuracy after 50 and 100 rounds.
  The papers' claims: SCAFFOLD and FedProx reach a target in fewer rounds than FedAvg on
  non-IID data with several local epochs (Karimireddy et al. 2020, Li et al. 2020); FedAdam and
  FedYogi beat FedAvg (Reddi et al. 2021).
- ``async``: FedBuff, FedAsync, K-async SGD and WKAFL on the AKAFL-RJ spec's ``stale`` profile
  (N = 1000, true staleness) and on it with 20 % stragglers 10 times slower, with the MLP:
  accuracy against virtual time, compared at equal virtual times and at an equal budget of
  3,000 client updates (see ASYNC_ARMS for how long each arm runs).
- ``dp``: DP-FedAvg (the ``dp-fedavg`` preset, 50 rounds) at noise multipliers 0 (no noise),
  0.5, 1 and 2:
  final accuracy against the epsilon its accountant reports, and that epsilon checked against
  dp-accounting's own calculator for the same (q, z, rounds).

    python benchmarks/baselines.py [--group sync,async,dp] [--seeds 3] [--report-only]

Prints the tables (Markdown) and writes them to docs/results/baselines/tables.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "baselines"
RUNS = ROOT / "runs" / "baselines"

SYNC_ARMS = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedprox", "scaffold"]
SYNC_TARGETS = (0.8, 0.9, 0.95)
SYNC_AT = (50, 100)

# The stale profile as the paper-scale reproduction runs it: x / 255 inputs (docs/reproduction.md).
ASYNC_COMMON = [
    "model.name=mlp",
    "model.hidden=[200]",
    "data.num_clients=1000",
    "data.normalize=unit",
]
# (preset, client updates per iteration, overrides). The 1,000 always-training clients of K-async
# SGD and WKAFL deliver their one-step updates about 50 times faster in virtual time than FedBuff's
# 100 concurrent clients with E = 5 local steps, so each arm runs until at least virtual time
# ~230 (FedAsync's span for 3,000 updates): K-async SGD and WKAFL 1,800 iterations (18,000
# updates), FedBuff 300 (3,000) evaluated every 3 so its first 230 time units have points too.
ASYNC_ARMS: dict[str, tuple[str, int, list[str]]] = {
    "fedbuff": ("fedbuff", 10, ["iterations=300", "eval.every=3", "clock.concurrency=100"]),
    "fedasync": ("fedasync", 1, ["iterations=3000", "eval.every=30"]),
    "kasync": ("kasync-stale", 10, ["iterations=1800", "eval.every=30"]),
    "wkafl": ("wkafl-stale", 10, ["iterations=1800", "eval.every=30"]),
}
ASYNC_UPDATES = 3000  # the equal-work column: accuracy after this many client updates
ASYNC_PROFILES = {"stale": [], "stragglers": ["clock.straggler_fraction=0.2"]}
DP_NOISE = (0.0, 0.5, 1.0, 2.0)
DP_ROUNDS = 50  # the preset's 100 halved to fit this 2-core machine


def arms(group: str) -> dict[str, tuple[str, list[str]]]:
    """arm name -> (preset, overrides) of a group."""
    if group == "sync":
        return {a: (a, []) for a in SYNC_ARMS}
    if group == "async":
        return {
            f"{arm}-{profile}": (preset, [*ASYNC_COMMON, *over, *extra])
            for profile, extra in ASYNC_PROFILES.items()
            for arm, (preset, _, over) in ASYNC_ARMS.items()
        }
    if group == "dp":
        return {
            f"z{z:g}": (
                "dp-fedavg",
                [f"aggregation.rules.dp_noise.noise_multiplier={z}", f"iterations={DP_ROUNDS}"],
            )
            for z in DP_NOISE
        }
    raise SystemExit(f"--group {group}: no such group (sync, async, dp)")


def result_path(group: str, arm: str, seed: int) -> Path:
    return RESULTS / group / f"{arm}-s{seed}.json"


def run_one(group: str, arm: str, preset: str, overrides: list[str], seed: int) -> dict[str, Any]:
    """Runs one arm at one seed (or reads its committed result for the same overrides)."""
    path = result_path(group, arm, seed)
    overrides = [*overrides, f"seed={seed}", "checkpoint_every=0"]
    if path.is_file():
        done = json.loads(path.read_text())
        if done["preset"] == preset and done["overrides"] == overrides:
            return done
    import rayfl

    started = time.perf_counter()
    out = RUNS / group / f"{arm}-s{seed}"
    run = rayfl.run(preset, overrides=overrides, output=out, progress=False)
    rows = run.metrics.to_pandas()
    evals = rows.dropna(subset=["eval/accuracy"])
    result = {
        "preset": preset,
        "overrides": overrides,
        "iteration": (evals["iteration"] + 1).tolist(),  # models evaluated after these many
        "virtual_time": evals["sys/virtual_time"].tolist(),
        "accuracy": evals["eval/accuracy"].tolist(),
        "summary": {k: v for k, v in run.summary.items() if k in ("final_accuracy", "privacy")},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if "dp/epsilon" in rows:
        result["epsilon"] = rows["dp/epsilon"].tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def first_reaching(result: dict[str, Any], target: float) -> float:
    """The first round whose model reaches ``target`` accuracy; NaN if none does."""
    for it, acc in zip(result["iteration"], result["accuracy"], strict=True):
        if acc >= target:
            return float(it)
    return math.nan


def accuracy_at(result: dict[str, Any], key: str, at: float) -> float:
    """The accuracy of the last evaluation at or before ``at`` (iteration or virtual time); NaN
    past the run's end, where it is not known."""
    if at > result[key][-1] + 1e-9:
        return math.nan
    got = [a for x, a in zip(result[key], result["accuracy"], strict=True) if x <= at + 1e-9]
    return got[-1] if got else math.nan


def mean_std(values: list[float], digits: int = 3) -> str:
    """'mean ± std' over seeds; a count of the seeds that never got there, if any."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return f"not reached ({len(values)}/{len(values)})"
    text = f"{np.mean(finite):.{digits}f} ± {np.std(finite):.{digits}f}"
    missed = len(values) - len(finite)
    return text + (f" ({missed} of {len(values)} never)" if missed else "")


def sync_table(results: dict[str, list[dict[str, Any]]]) -> str:
    head = ["arm", *(f"rounds to {t:.0%}" for t in SYNC_TARGETS)]
    head += [f"acc. after {r}" for r in SYNC_AT]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, runs in results.items():
        cells = [arm]
        cells += [mean_std([first_reaching(r, t) for r in runs], 1) for t in SYNC_TARGETS]
        cells += [mean_std([accuracy_at(r, "iteration", n) for r in runs]) for n in SYNC_AT]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def async_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Per profile: the accuracy at equal virtual times (50, 100 and the horizon, the earliest
    time at which an arm's run ended) and at an equal budget of 3,000 client updates, with the
    virtual time that budget took. Also draws accuracy against virtual time."""
    lines = []
    for profile in ASYNC_PROFILES:
        mine = {a: r for a, r in results.items() if a.endswith(f"-{profile}")}
        if not mine:
            continue
        horizon = min(r["virtual_time"][-1] for runs in mine.values() for r in runs)
        times = (50.0, 100.0, horizon)
        head = ["arm", *(f"acc. at vt {t:.0f}" for t in times)]
        head += [f"acc. after {ASYNC_UPDATES:,} updates", "vt then"]
        lines += [f"\n**{profile}**\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm, runs in mine.items():
            name = arm.removesuffix(f"-{profile}")
            done = ASYNC_UPDATES / ASYNC_ARMS[name][1]  # iterations for the equal budget
            cells = [name]
            for t in times:
                at = [accuracy_at(r, "virtual_time", t) for r in runs]
                cells.append("-" if all(math.isnan(x) for x in at) else mean_std(at))
            cells.append(mean_std([accuracy_at(r, "iteration", done) for r in runs]))
            cells.append(mean_std([value_at(r, "virtual_time", done) for r in runs], 0))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(f"\n![accuracy against virtual time, {profile}](img/baselines-{profile}.png)")
        plot_async(mine, profile, horizon)
    return "\n".join(lines)


def value_at(result: dict[str, Any], key: str, iteration: float) -> float:
    """``result[key]`` at the last evaluation at or before ``iteration``."""
    got = [v for it, v in zip(result["iteration"], result[key], strict=True) if it <= iteration]
    return got[-1] if got else math.nan


def plot_async(results: dict[str, list[dict[str, Any]]], profile: str, horizon: float) -> Path:
    """docs/img/baselines-<profile>.png: test accuracy against virtual time, one line per seed,
    a dotted line at the horizon the table compares at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, (arm, runs) in enumerate(results.items()):
        for j, r in enumerate(runs):
            label = arm.removesuffix(f"-{profile}") if j == 0 else None
            ax.plot(r["virtual_time"], r["accuracy"], color=f"C{k}", alpha=0.8, label=label)
    ax.axvline(horizon, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("virtual time (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{profile} profile, seeds 0-2")
    ax.legend()
    path = ROOT / "docs" / "img" / f"baselines-{profile}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def dp_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Accuracy against epsilon; the run's epsilon beside dp-accounting's own RdpAccountant
    composing the same events afresh, and beside the paper's accounting (Poisson sampling at
    q = M / N, add-or-remove neighbours) for reference."""
    from rayfl.config import load_config

    head = ["z", "final accuracy", "epsilon (run)", "epsilon (dp-accounting, same events)"]
    head.append("epsilon (Poisson q, add/remove)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, runs in results.items():
        cfg = load_config(runs[0]["preset"], runs[0]["overrides"])
        n = cfg.data.num_clients
        m = max(1, math.floor(cfg.selection.k_fraction * n + 1e-9))
        z = float(arm[1:])
        eps = runs[0]["epsilon"][-1] if "epsilon" in runs[0] else math.nan
        same, poisson = library_epsilons(z, m, n, cfg.iterations, 1 / n**1.1)
        accs = mean_std([r["accuracy"][-1] for r in runs])
        lines.append(f"| {z:g} | {accs} | {eps:.3f} | {same:.3f} | {poisson:.3f} |")
    return "\n".join(lines)


def library_epsilons(z: float, m: int, n: int, rounds: int, delta: float) -> tuple[float, float]:
    """dp-accounting's epsilons, computed here without rayfl: (M of N without replacement under
    replace-one, with the Gaussian's multiplier z / 2 as rayfl.aggregation.privacy explains;
    Poisson sampling at q = M / N under add-or-remove, the paper's accounting)."""
    if z == 0:
        return math.inf, math.inf
    import dp_accounting as dpa
    from dp_accounting import rdp

    same = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    gaussian = dpa.GaussianDpEvent(z / 2)
    same.compose(dpa.SampledWithoutReplacementDpEvent(n, m, gaussian), rounds)
    poisson = rdp.RdpAccountant()
    poisson.compose(dpa.PoissonSampledDpEvent(m / n, dpa.GaussianDpEvent(z)), rounds)
    return same.get_epsilon(delta), poisson.get_epsilon(delta)


TABLES = {"sync": sync_table, "async": async_table, "dp": dp_table}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", default="sync,async,dp")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--report-only", action="store_true", help="tables from committed results")
    args = p.parse_args()
    groups = args.group.split(",")
    out = []
    for group in groups:
        results: dict[str, list[dict[str, Any]]] = {}
        for arm, (preset, overrides) in arms(group).items():
            for seed in range(args.seeds):
                path = result_path(group, arm, seed)
                if args.report_only:
                    if path.is_file():
                        results.setdefault(arm, []).append(json.loads(path.read_text()))
                    continue
                r = run_one(group, arm, preset, overrides, seed)
                results.setdefault(arm, []).append(r)
                print(f"{group} {arm} seed {seed}: acc {r['accuracy'][-1]:.4f}", flush=True)
        if results:
            out.append(f"### {group}\n\n{TABLES[group](results)}\n")
    text = "\n".join(out)
    print(text)
    if not args.report_only or text:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"tables-{'-'.join(groups)}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Judgement in the default run (issue 15, item 2): how the quick AKAFL-RJ preset's judgement
behaves over seeds, as shipped and with its schedule scaled to the quick size.

The quick preset runs T = 1,200 iterations; judgement's constants are the paper-size ones
(eval_every 50 before activation, start once D_t < eps_m and t >= 0.2 T). With 50 iterations
between evaluations the EWMAs of eq. 3 and 4 remember about 500 iterations, close to half the run:
D_t falls under eps_m only on a long plateau, so judgement either never starts or starts on the
early plateau and then holds the model back. The variants scale the schedule to T = 1,200
(eval_every 12 = 50 x 1200 / 5000) and start later (t_min_fraction 0.5), which the spec allows
(both are its parameters; the rule is unchanged); each also with x / 255 inputs (``unit``), the
input scaling of the paper-scale profiles.

Each run's numbers are kept under ``docs/results/default_judgement/`` (resumable).

    python benchmarks/default_judgement.py [--seeds 0 1 2] [--variants late-unit,shipped-unit,late,shipped]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "default_judgement"
JUDGE = "aggregation.control.judgement"
LATE = [f"{JUDGE}.eval_every=12", f"{JUDGE}.t_min_fraction=0.5"]
UNIT = ["data.normalize=unit"]  # x / 255, as the paper-scale profiles (benchmarks/input_scaling.py)
# D_t falls under 0.002 only ~1,200 iterations after the climb: start at 0.6 T on 0.005.
LATE_LOOSE = [f"{JUDGE}.eval_every=12", f"{JUDGE}.t_min_fraction=0.6", f"{JUDGE}.eps_m=0.005"]
VARIANTS = {  # the proposed one first, so a stopped run has what matters
    "late-loose-unit": [*LATE_LOOSE, *UNIT],
    "late-unit": [*LATE, *UNIT],
    "shipped-unit": UNIT,
    "late": LATE,
    "shipped": [],
}


def run(variant: str, seed: int) -> dict:
    overrides = [*VARIANTS[variant], f"seed={seed}", "checkpoint_every=0"]
    path = RESULTS / f"{variant}-s{seed}.json"
    if path.is_file():
        done = json.loads(path.read_text())
        if done["overrides"] == overrides:
            return done
    import rayfl

    started = time.perf_counter()
    out = ROOT / "runs" / "default_judgement" / f"{variant}-s{seed}"
    result = rayfl.run("akafl-rj", overrides=overrides, output=out, progress=False)
    m = result.metrics.to_pandas()
    active = m.index[m["judge/active"] == 1.0]
    s = result.summary
    data = {
        "overrides": overrides,
        "final_accuracy": s["final_accuracy"],
        "best_accuracy": s["best_accuracy"],
        "maintained": s["maintained"],
        "remodels": s["remodels"],
        "judgement_start": int(m["iteration"][active[0]]) if len(active) else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    lines = [
        "| variant | seed | final acc. | best acc. | judgement starts | maintained | remodels |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in args.variants.split(","):
        for seed in args.seeds:
            d = run(variant, seed)
            start = "never" if d["judgement_start"] is None else str(d["judgement_start"])
            lines.append(
                f"| {variant} | {seed} | {d['final_accuracy']:.4f} | {d['best_accuracy']:.4f} | "
                f"{start} | {d['maintained']} | {d['remodels']} |"
            )
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    (RESULTS / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

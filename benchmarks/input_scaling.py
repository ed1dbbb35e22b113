"""The early phase of WKAFL on the paper profile with either input scaling (issue 15, item 5).

An independent single-process implementation of the AKAFL-RJ spec's sections 1-3 (WKAFL, N = 100,
K = 10, B = 16, eta = 0.05, virtual clock, true staleness), which feeds MNIST pixels as x / 255,
climbed 100-200 iterations earlier than rayfl, which normalised with MNIST's mean and std. This
runs ``wkafl-paper`` for 600 iterations with ``data.normalize`` standard and unit over seeds 0-2
and prints test accuracy at t = 250 and 600 (evaluated every 50 iterations) beside that
implementation's numbers. Resumable: each finished run's accuracy curve is kept under
``docs/results/input_scaling/`` and not run again.

    python benchmarks/input_scaling.py [--seeds 3] [--iterations 600]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "input_scaling"
# The independent implementation's accuracies (x / 255) at t = 250 and 550, seeds 0, 1, 2.
INDEPENDENT = {250: (0.60, 0.18, 0.50), 550: (0.81, 0.81, 0.91)}


def run(normalize: str, seed: int, iterations: int) -> dict:
    path = RESULTS / f"{normalize}-s{seed}-T{iterations}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import rayfl

    overrides = [
        f"data.normalize={normalize}",
        f"seed={seed}",
        f"iterations={iterations}",
        "eval.every=50",
        "checkpoint_every=0",
    ]
    out = ROOT / "runs" / "input_scaling" / f"{normalize}-s{seed}"
    result = rayfl.run("wkafl-paper", overrides=overrides, output=out, progress=False)
    rows = result.metrics.to_pandas().dropna(subset=["eval/accuracy"])
    data = {
        "overrides": overrides,
        "t": (rows["iteration"] + 1).tolist(),
        "accuracy": rows["eval/accuracy"].tolist(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    return data


def at(data: dict, t: int) -> float:
    """Accuracy of the last evaluation at or before iteration t."""
    got = [a for x, a in zip(data["t"], data["accuracy"], strict=True) if x <= t]
    return got[-1] if got else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=600)
    args = p.parse_args()
    lines = [
        "| input scaling | seed | acc. t = 250 | acc. t = 550 | acc. t = 600 |",
        "|---|---|---|---|---|",
    ]
    for normalize in ("standard", "unit"):
        for seed in range(args.seeds):
            d = run(normalize, seed, args.iterations)
            lines.append(
                f"| {normalize} | {seed} | {at(d, 250):.2f} | {at(d, 550):.2f} | {at(d, 600):.2f} |"
            )
    for seed in range(min(args.seeds, 3)):
        lines.append(
            f"| independent, x / 255 | {seed} | {INDEPENDENT[250][seed]:.2f} | "
            f"{INDEPENDENT[550][seed]:.2f} | - |"
        )
    text = "\n".join(lines)
    print(text)
    (RESULTS / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`rayfl reproduce incentive --quick` end to end through the real CLI (what CI runs)."""

from __future__ import annotations

import csv


def test_reproduce_incentive_quick(ray_address, tmp_path, cli):
    out = tmp_path / "repro"
    proc = cli(
        "reproduce", "incentive", "--quick", "--output", str(out), "--address", ray_address,
        "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "incentive.md").read_text()
    assert table in proc.stdout  # the CLI prints the main table
    for name in ("experiment_a.png", "experiment_b.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # experiment A: 3 selectors x 2 seeds, 6 rounds each, beside the paper's numbers
    runs = list(csv.DictReader((out / "experiment_a_runs.csv").open()))
    assert sorted((r["selector"], r["seed"]) for r in runs) == sorted(
        (s, str(k)) for s in ("random", "pow-d", "incentive") for k in (0, 1)
    )
    assert all(0.1 < float(r["final_accuracy"]) <= 1.0 for r in runs)
    assert "| pow-d | 2 |" in table and "| 16 |" in table and "80.19" in table
    # experiment B: the four |C| of the paper, with its APE column
    for c, paper in ((2, "0.0003"), (5, "0.0040"), (8, "0.0148"), (11, "0.0369")):
        assert f"| {c} | {paper} |" in table
    assert (out / "runs" / "incentive-seed1" / "rounds.parquet").is_file()

"""Sync runs checkpoint and resume like the K-async engine (issue 7): a run stopped at round t
(Ctrl-C or its last checkpoint) and resumed ends on the same weights and records as an unbroken
run, because every draw of round t derives from (seed, t)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.errors import RayflError

TINY = [
    "data.num_clients=20",
    "model.hidden=[16]",
    "eval.max_samples=500",
    "eval.every=1",
    "client.num_workers=2",
    "client.num_cpus=0.5",
]
ROUNDS = 6


class Stop(KeyboardInterrupt):
    """Ctrl-C, raised from the callback after round ``at`` (0-based) is logged."""


def _rounds(run_dir):
    table = pq.read_table(run_dir / "rounds.parquet").to_pylist()
    # repr: NaN (pow-d has no carried budget) compares equal to NaN
    return [repr((r["round"], r["selected"], r["payments"], r["carried"])) for r in table]


@pytest.mark.parametrize("preset", ["incentive", "pow-d"])
def test_interrupted_and_resumed_sync_run_equals_an_unbroken_run(ray_session, tmp_path, preset):
    unbroken = rayfl.run(
        preset, overrides=[*TINY, f"iterations={ROUNDS}"], output=tmp_path / "a", progress=False
    )

    def interrupt(rows):
        if rows[-1]["iteration"] == 2:
            raise Stop

    with pytest.raises(Stop):
        rayfl.run(
            preset,
            overrides=[*TINY, f"iterations={ROUNDS}"],
            output=tmp_path / "b",
            progress=False,
            callback=interrupt,
        )
    cut = tmp_path / "b"
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["resume"] == f"rayfl run --resume {cut}"
    # The checkpoint matches the metrics: rounds 0-2 done, nothing of round 3.
    assert pq.read_table(cut / "metrics.parquet")["iteration"].to_pylist() == [0, 1, 2]
    assert pq.read_table(cut / "rounds.parquet")["round"].to_pylist() == [0, 1, 2]

    resumed = rayfl.run(cut, resume=cut, progress=False)
    assert resumed.summary["status"] == "finished"
    assert np.array_equal(resumed.weights, unbroken.weights)
    assert _rounds(cut) == _rounds(unbroken.run_dir)
    got = pq.read_table(cut / "metrics.parquet").to_pandas()
    want = pq.read_table(unbroken.run_dir / "metrics.parquet").to_pandas()
    assert got["iteration"].tolist() == list(range(ROUNDS))
    assert np.allclose(got["eval/accuracy"], want["eval/accuracy"])


def test_a_finished_sync_run_extends_and_checkpoints_periodically(ray_session, tmp_path):
    """checkpoint_every rounds and at the end; --set iterations=N goes on from the end."""
    saved = []
    first = rayfl.run(
        "random",
        overrides=[*TINY, "iterations=4", "checkpoint_every=2"],
        output=tmp_path / "run",
        progress=False,
        on_checkpoint=lambda d: saved.append(json.dumps(sorted(p.name for p in d.iterdir()))),
    )
    assert len(saved) == 2 and "checkpoint.npz" in saved[0]  # at round 2 and at the end
    more = rayfl.run(
        first.run_dir, resume=first.run_dir, overrides=["iterations=6"], progress=False
    )
    straight = rayfl.run(
        "random", overrides=[*TINY, "iterations=6"], output=tmp_path / "straight", progress=False
    )
    assert np.array_equal(more.weights, straight.weights)
    with pytest.raises(RayflError, match="already ran 6 of 6"):
        rayfl.run(first.run_dir, resume=first.run_dir, progress=False)

"""``rayfl reproduce incentive --ablation`` keeps each finished run in a results store, so a
stopped ablation continues where it was (issue 15, item 4: 90 runs, hours on 2 cores)."""

from __future__ import annotations

import json

from rayfl.reproduce.incentive import run_arms
from rayfl.reproduce.incentive_ablation import ARMS, ResultsStore

ROUNDS = 1


def test_the_ablation_store_skips_stored_runs_and_reruns_changed_configs(ray_session, tmp_path):
    arms = [arm for arm in ARMS if arm.name in ("random", "+bargaining")]
    store = ResultsStore(tmp_path / "results", ROUNDS)
    by_name = {arm.name: arm for arm in arms}

    def go(runs_dir):
        return run_arms(
            tmp_path / runs_dir,
            arms,
            1,
            ROUNDS,
            progress=False,
            stored=store.get,
            store=lambda record: store.put(by_name[record["arm"]], record),
        )

    first = go("runs1")
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*.json"))
    assert [str(f) for f in files] == [
        "results/plus-bargaining/seed0-R1.json",
        "results/random/seed0-R1.json",
    ]

    again = go("runs2")  # everything is stored: nothing runs
    assert not (tmp_path / "runs2").exists()
    assert [(r["arm"], r["final_accuracy"]) for r in again] == [
        (r["arm"], r["final_accuracy"]) for r in first
    ]

    # a stored run of another config is run again
    path = tmp_path / "results" / "random" / "seed0-R1.json"
    stored = json.loads(path.read_text())
    stored["config_sha256"] = "0" * 64
    path.write_text(json.dumps(stored))
    go("runs3")
    assert [p.name for p in (tmp_path / "runs3").iterdir()] == ["random-seed0"]
    assert json.loads(path.read_text())["config_sha256"] != "0" * 64

"""A selector from outside rayfl (tests/fixtures/custom_selectors.py) on the real rounds engine:
its query runs on the workers, its selection trains, its state is checkpointed and restored, its
columns reach rounds.parquet; and each kind of bad output stops the run with one line naming
``selection.kind`` (issue 14 item 3).

Tiny runs as in ``test_rounds.py``: 20 clients, a 16-unit MLP, 500 evaluation images, two workers.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

import rayfl
from rayfl.clients.worker import make_pool
from rayfl.config import ExperimentConfig, load_config
from rayfl.errors import ConfigError, RayflError
from rayfl.rounds.loop import RoundServer
from rayfl.rounds.records import COMMON_COLUMNS
from rayfl.runtime.checkpoint import read_checkpoint
from rayfl.runtime.data import load_data, put_data
from rayfl.selection.shipped import SHIPPED_COLUMNS

# The server side imports the user's module here; Ray's workers find it through PYTHONPATH.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

TINY = [
    "data.num_clients=20",
    "model.hidden=[16]",
    "eval.max_samples=500",
    "eval.every=1",
    "client.num_workers=2",
    "client.num_cpus=0.5",
]
ROUNDS = 4
M = 2  # max(1, floor(0.1 * 20))


def custom(kind: str, params: dict, *extra: str) -> ExperimentConfig:
    cfg = load_config("random", [*TINY, *extra])
    selection = dataclasses.replace(cfg.selection, kind=kind, params=params)
    return dataclasses.replace(cfg, selection=selection)


def test_the_config_takes_a_selector_by_import_path():
    cfg = load_config(
        "random",
        ["selection.kind=custom_selectors:least_picked", "selection.params={payment: 0.5}"],
    )
    assert cfg.selection.kind == "custom_selectors:least_picked"
    with pytest.raises(ConfigError, match="selection.params.paymnt is not a parameter"):
        load_config(
            "random",
            ["selection.kind=custom_selectors:least_picked", "selection.params={paymnt: 1}"],
        )


class Stop(KeyboardInterrupt):
    """Ctrl-C, raised from the callback after round 1 is logged."""


def test_a_custom_selector_runs_records_and_resumes(ray_session, tmp_path):
    cfg = custom("custom_selectors:least_picked", {"payment": 0.5}, f"iterations={ROUNDS}")
    unbroken = rayfl.run(cfg, output=tmp_path / "a", progress=False)
    rounds = pq.read_table(unbroken.run_dir / "rounds.parquet").to_pylist()
    columns = pq.read_table(unbroken.run_dir / "rounds.parquet").column_names
    # the engine's columns, then the selector's own; nothing of the incentive mechanism's
    assert columns == [*COMMON_COLUMNS, "probe_ids", "probe_losses", "picked_before"]
    assert not set(columns) & set(SHIPPED_COLUMNS)
    picked = np.zeros(20, dtype=np.int64)
    for r in rounds:
        assert r["probe_ids"] == list(range(20))  # every client answered, in id order
        assert r["picked_before"] == picked.tolist()  # the state it was handed
        want = np.lexsort((-np.array(r["probe_losses"]), picked))[:M]
        assert r["selected"] == want.tolist()  # its selection is the one that trained
        assert r["payments"] == [0.5] * M
        picked[want] += 1
    metrics = unbroken.metrics.to_pandas()
    assert metrics["agg/k"].tolist() == [M] * ROUNDS
    assert metrics["custom/max_picked"].tolist() == [1.0] * ROUNDS  # 4 x 2 distinct of 20
    updates = pq.read_table(unbroken.run_dir / "updates.parquet").to_pandas()
    assert updates.groupby("iteration")["client_id"].apply(list).tolist() == [
        r["selected"] for r in rounds
    ]
    assert unbroken.summary["total_payments"] == pytest.approx(0.5 * M * ROUNDS)

    def interrupt(rows):
        if rows[-1]["iteration"] == 1:
            raise Stop

    cut = tmp_path / "b"
    with pytest.raises(Stop):
        rayfl.run(cfg, output=cut, progress=False, callback=interrupt)
    state = read_checkpoint(cut)
    after_two = np.zeros(20, dtype=np.int64)
    for r in rounds[:2]:
        after_two[r["selected"]] += 1
    assert state["t"] == 2
    assert np.array_equal(state["selector_state"], after_two)  # the selector's own state

    resumed = rayfl.run(resume=cut, progress=False)  # config.yaml names the user's selector
    assert resumed.summary["status"] == "finished"
    assert np.array_equal(resumed.weights, unbroken.weights)
    assert pq.read_table(cut / "rounds.parquet").to_pylist() == rounds


# --- bad output ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaky_pool(ray_session):
    """Data and two workers whose selector is ``custom_selectors:bad(how="leak")``."""
    cfg = custom("custom_selectors:bad", {"how": "leak"}, "iterations=1")
    ds, part = load_data(cfg)
    data = put_data(ds, part)
    workers = make_pool(cfg, max_concurrency=4)
    ray.get([w.attach.remote(data) for w in workers])
    yield data, workers, part.sizes()
    for w in workers:
        ray.kill(w)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("unknown", "selected client 20, outside [0, 20): unknown client"),
        ("negative", "selected client -1, outside [0, 20)"),
        ("duplicate", "selected client 1 twice"),
        ("too_many", f"selected {M + 1} clients in round 0, more than M(t)={M}"),
        ("float", "client ids must be a 1-D list of integers"),
        ("payments", "1 payments for 2 clients"),
        ("not_a_selection", "select returned (list, NoneType): return (Selection, state)"),
        ("column", "Selection.record uses the engine's column names ['accuracy']"),
        ("no_handler", "ask('loss') has no handler"),
        ("ask_unknown", "ask('probe') addressed 20, not a client id in [0, 20)"),
        ("leak", "query 'probe' replied a Secret, which its handler does not declare"),
    ],
)
def test_bad_selector_output_is_a_one_line_error(leaky_pool, how, message):
    data, workers, sizes = leaky_pool
    cfg = custom("custom_selectors:bad", {"how": how}, "iterations=1")
    server = RoundServer(cfg, data, workers, sizes)
    with pytest.raises(RayflError) as e:
        server.round()
    text = str(e.value)
    assert "\n" not in text and text.startswith("selection.kind='custom_selectors:bad': "), text
    assert message in text, text
    assert server.t == 0 and server.selector_state is None  # nothing of the round was kept
    if how == "leak":
        # the server saw the undeclared type (counted), and refused it before the selector did
        assert server.received["selection"] == {"Secret": 2}


def test_bad_output_stops_a_run_with_that_line(ray_session, tmp_path):
    cfg = custom("custom_selectors:bad", {"how": "duplicate"}, "iterations=2")
    with pytest.raises(
        RayflError, match=r"^selection.kind='custom_selectors:bad': selected client"
    ):
        rayfl.run(cfg, output=tmp_path / "run", progress=False)

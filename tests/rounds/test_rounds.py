"""The synchronous round driver end to end on a real Ray (incentive spec sections 1-9).

Tiny runs: 20 clients, a 16-unit MLP, 2-3 rounds, 500 evaluation images, two workers.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

import rayfl
from rayfl.clients.rounds import RoundUpdate
from rayfl.clients.worker import make_pool
from rayfl.config import load_config
from rayfl.rounds.loop import RoundServer
from rayfl.rounds.records import COMMON_COLUMNS
from rayfl.runtime.data import load_data, put_data
from rayfl.selection import (
    BargainParams,
    Bid,
    ClientPrivate,
    Offer,
    Response,
    client_reply,
    select_incentive,
)
from rayfl.selection.shipped import SHIPPED_COLUMNS, incentive_record

TINY = [
    "data.num_clients=20",
    "model.hidden=[16]",
    "iterations=3",
    "eval.max_samples=500",
    "client.num_workers=2",
    "selection.d=6",
]


def run(tmp_path, preset, *extra, name="run"):
    return rayfl.run(preset, overrides=[*TINY, *extra], output=tmp_path / name, progress=False)


def rounds_table(result):
    return pq.read_table(result.run_dir / "rounds.parquet").to_pandas()


@pytest.mark.parametrize("selector", ["random", "pow-d", "incentive"])
def test_each_selector_runs_end_to_end(ray_session, tmp_path, selector):
    res = run(tmp_path, selector)
    d = res.run_dir
    for f in ("config.yaml", "metrics.parquet", "updates.parquet", "rounds.parquet", "model.pt"):
        assert (d / f).is_file(), f
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["selection"] == selector
    metrics = res.metrics.to_pandas()
    assert metrics["iteration"].tolist() == [0, 1, 2]
    acc = metrics["eval/accuracy"].to_numpy()
    assert np.isfinite(acc).all() and (acc > 0.15).any()  # 10 classes: better than chance
    assert (metrics["agg/k"] == 2).all()  # M = max(1, floor(0.1 * 20))
    rounds = rounds_table(res)
    # the engine's columns, then the columns all three shipped selectors record
    assert list(rounds.columns) == [*COMMON_COLUMNS, *SHIPPED_COLUMNS]
    assert rounds["accuracy"].tolist() == pytest.approx(acc.tolist())
    assert all(len(s) == 2 and len(set(s)) == 2 for s in rounds["selected"])
    upd = pq.read_table(d / "updates.parquet").to_pandas()
    assert len(upd) == 6 and np.allclose(upd.groupby("iteration")["weight"].sum(), 1.0)
    assert np.isfinite(res.weights).all()
    if selector == "incentive":
        # every round pays within its budget, and what is not paid is carried over
        for r in rounds.itertuples():
            assert sum(r.payments) <= r.budget + 1e-9
            assert r.carried == pytest.approx(r.budget - sum(r.payments))
            assert all(b <= c for b, c in zip(r.bids, r.caps, strict=True))
            assert len(r.steps) == 2 and r.ape >= 0
        budgets = rounds["budget"].tolist()
        carried = rounds["carried"].tolist()
        assert budgets[1:] == pytest.approx([10.0 + c for c in carried[:-1]])
        assert summary["total_payments"] == pytest.approx(rounds["payments"].map(sum).sum())
    elif selector == "pow-d":
        assert all(len(c) == 6 for c in rounds["candidates"])
        for r in rounds.itertuples():  # the selected are the lossiest candidates
            by_loss = np.array(r.candidates)[np.argsort(-np.array(r.candidate_losses))]
            assert set(r.selected) == set(by_loss[:2].tolist())
    for r in rounds.itertuples():
        assert r.social_welfare == pytest.approx(r.server_utility + r.client_utility_sum)


def test_same_seed_same_model(ray_session, tmp_path):
    a = run(tmp_path, "incentive", "iterations=2", name="a")
    b = run(tmp_path, "incentive", "iterations=2", "client.num_workers=1", name="b")
    assert np.array_equal(a.weights, b.weights)  # 1 worker or 2: the same bytes
    pay_a, pay_b = (rounds_table(r)["payments"].map(list).tolist() for r in (a, b))
    assert pay_a == pay_b


def test_empty_candidate_set_skips_the_round_and_carries_the_budget(ray_session, tmp_path):
    # a communication cost of 100 makes every bid ~100, far above any cap: nobody qualifies
    res = run(tmp_path, "incentive", "incentive.c_comm=100")
    rounds = rounds_table(res)
    assert rounds["skipped"].all() and (rounds["num_selected"] == 0).all()
    assert rounds["carried"].tolist() == pytest.approx([10.0, 20.0, 30.0])
    assert rounds["budget"].tolist() == pytest.approx([10.0, 20.0, 30.0])
    assert [list(c) for c in rounds["num_candidates"]] == [[0], [0], [0]]
    metrics = res.metrics.to_pandas()
    assert (metrics["sel/skipped"] == 1.0).all() and (metrics["agg/k"] == 0).all()
    assert res.summary["rounds_skipped"] == 3 and res.summary["status"] == "finished"
    acc = rounds["accuracy"].to_numpy()
    assert np.allclose(acc, acc[0])  # the model never changed
    assert math.isnan(rounds["ape"].iloc[0])


def test_all_bids_zero_everyone_qualifies(ray_session, tmp_path):
    # a huge loss sensitivity makes e_i >> phi_i for everyone: every bid is 0
    res = run(tmp_path, "incentive", "incentive.gamma_mean=1000", "iterations=2")
    rounds = rounds_table(res)
    assert all(list(c) == [20] for c in rounds["num_candidates"])
    for r in rounds.itertuples():
        assert list(r.bids) == [0.0, 0.0]
        assert all(0 < x < c for x, c in zip(r.payments, r.caps, strict=True))
    assert not rounds["skipped"].any()


def test_k_times_n_below_one_trains_one_client(ray_session, tmp_path):
    res = run(tmp_path, "random", "selection.k_fraction=0.01", "iterations=2")
    assert (res.metrics.to_pandas()["agg/k"] == 1).all()


def test_server_receives_only_messages(ray_session):
    """Privacy by type: during selection the server side gets Bid/Offer/Response (incentive) or
    LossReport (pow-d) objects and nothing else; none of them can carry a private number."""
    private = {f.name for f in dataclasses.fields(ClientPrivate)} - {"client_id"} | {"loss", "cost"}
    for msg in (Bid, Offer, Response):
        assert not {f.name for f in dataclasses.fields(msg)} & private
        assert {f.name for f in dataclasses.fields(msg)} <= {
            "client_id",
            "amount",
            "step",
            "price",
            "accept",
        }
    for kind, allowed in (("incentive", {"Bid", "Offer", "Response"}), ("pow-d", {"LossReport"})):
        cfg = load_config(kind, [*TINY, "iterations=1"])
        ds, part = load_data(cfg)
        data = put_data(ds, part)
        workers = make_pool(cfg, max_concurrency=4)
        try:
            ray.get([w.attach.remote(data) for w in workers])
            server = RoundServer(cfg, data, workers, part.sizes())
            server.round()
        finally:
            for w in workers:
                ray.kill(w)
        assert set(server.received["selection"]) == allowed
        assert set(server.received["training"]) == {RoundUpdate.__name__}
        assert set(server.received["records"]) == {"float"}  # the simulator's records only
        if kind == "incentive":
            assert server.received["selection"]["Bid"] == 20  # every client bid once


def test_zero_surplus_client_is_paid_its_bid_and_left_out_of_the_nash_product():
    # bid == cap: the client qualifies, its surplus is 0, it is paid exactly its bid at once
    priv = {i: ClientPrivate(i, 1.0, 1.0, 0.95, 0.002, 100, 0.5) for i in range(2)}
    amounts = {0: 5.0, 1: 1.0}  # cap = 10 / 2 = 5

    def bids(ids, cap):
        return [Bid(i, amounts[i]) for i in ids]

    def replies(offers, cap):
        return [client_reply(priv[o.client_id], amounts[o.client_id], cap, 0.95, o) for o in offers]

    r = select_incentive(
        range(2), 0.0, 10.0, 1.0, bids, replies, BargainParams(), np.random.default_rng(0)
    )
    rec = incentive_record(r)
    pay = dict(zip(r.selected.tolist(), r.payments.tolist(), strict=True))
    assert pay[0] == 5.0
    assert 1.0 < pay[1] < 5.0
    assert math.isfinite(rec["log_nash_product"]) and rec["ape"] >= 0  # client 1 only
    assert rec["carried"] == pytest.approx(10.0 - sum(pay.values()))

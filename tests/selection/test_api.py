"""The selector interface without Ray: the engine's checks, the registry, and one contract test
run over every shipped selector with its query handlers answered in process."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rayfl import seeding
from rayfl.config import load_config
from rayfl.errors import ConfigError, RayflError
from rayfl.runtime import safestate
from rayfl.selection import (
    SELECTORS,
    Bid,
    LossReport,
    QueryHandler,
    RoundContext,
    Selection,
    Selector,
    build_selector,
    draw_client,
    num_selected,
)
from rayfl.selection.api import (
    by_client,
    check_asked,
    check_replies,
    checked_selection,
    checked_selector,
)
from rayfl.selection.shipped import SHIPPED_COLUMNS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))  # custom_selectors

TINY = ["data.num_clients=20", "selection.d=6"]


def context(n: int = 5, m: int = 2, t: int = 0, cfg: Any = None) -> RoundContext:
    return RoundContext(
        t=t,
        num_clients=n,
        m=m,
        sizes=np.full(n, 100, dtype=np.int64),
        rng=np.random.default_rng(0),
        accuracy=(0.1,),
        cfg=cfg,
    )


def one_line_error(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, msg


# --- what select may return ------------------------------------------------------------------------


def test_a_good_selection_is_normalised():
    sel, state = checked_selection("k", (Selection([3, 1], [0.5, 2]), {"s": 1}), context())
    assert sel.clients.dtype == np.int64 and sel.clients.tolist() == [3, 1]
    assert sel.payments.dtype == np.float64 and sel.payments.tolist() == [0.5, 2.0]
    assert state == {"s": 1}
    empty, _ = checked_selection("k", (Selection([]), None), context())  # a skipped round
    assert empty.clients.dtype == np.int64 and empty.clients.size == 0
    assert empty.payments.size == 0


@pytest.mark.parametrize(
    ("clients", "payments", "message"),
    [
        ([0, 5], (), "selected client 5, outside [0, 5): unknown client"),
        ([-1], (), "selected client -1, outside [0, 5)"),
        ([2, 0, 2], (), "selected client 2 twice"),
        ([0, 1, 2], (), "selected 3 clients in round 0, more than M(t)=2"),
        ([0.0, 1.0], (), "client ids must be a 1-D list of integers"),
        ([True, False], (), "client ids must be a 1-D list of integers"),
        ([[0, 1]], (), "client ids must be a 1-D list of integers"),
        ([0, 1], [1.0], "1 payments for 2 clients"),
        ([0, 1], [1.0, math.nan], "must be finite numbers"),
        ([0, 1], ["a", "b"], "must be finite numbers"),
    ],
)
def test_bad_selections_are_one_line_errors_naming_the_field(clients, payments, message):
    with pytest.raises(RayflError) as e:
        checked_selection("my.mod:pick", (Selection(clients, payments), None), context())
    one_line_error(e, "selection.kind='my.mod:pick'", message)


@pytest.mark.parametrize("out", [Selection([0]), [0, 1], (np.array([0]), None), None])
def test_select_must_return_a_selection_and_a_state(out):
    with pytest.raises(RayflError) as e:
        checked_selection("k", out, context())
    one_line_error(e, "selection.kind='k'", "return (Selection, state)")


def test_record_and_metrics_must_be_named_columns():
    with pytest.raises(RayflError) as e:
        checked_selection("k", (Selection([0], record={1: 2}), None), context())
    one_line_error(e, "Selection.record must be a mapping")


# --- ask and the replies -------------------------------------------------------------------------


def test_an_undeclared_reply_type_is_an_error_naming_the_field():
    handler = QueryHandler(lambda c, items, p: None, (Bid,))
    check_replies("incentive", "bid", handler, [Bid(0, 1.0), Bid(1, 2.0)])
    with pytest.raises(RayflError) as e:
        check_replies("incentive", "bid", handler, [Bid(0, 1.0), LossReport(1, 0.3)])
    one_line_error(e, "selection.kind='incentive'", "query 'bid'", "LossReport", "Bid")

    @dataclasses.dataclass(frozen=True)
    class RicherBid(Bid):  # a subclass could smuggle out more fields: refused too
        loss: float = 0.0

    with pytest.raises(RayflError, match="RicherBid"):
        check_replies("incentive", "bid", handler, [RicherBid(0, 1.0, 0.3)])


def test_ask_addresses_only_known_clients():
    check_asked("k", "q", [0, np.int64(4), Bid(2, 1.0)], 5)
    for bad in ([5], [-1], [1.5], ["0"], [Bid(7, 1.0)]):
        with pytest.raises(RayflError) as e:
            check_asked("k", "q", bad, 5)
        one_line_error(e, "selection.kind='k'", "ask('q')", "[0, 5)")


def test_by_client_groups_in_first_seen_order():
    items = [Bid(3, 1.0), 1, Bid(3, 2.0), np.int64(0)]
    assert by_client(items) == {3: [Bid(3, 1.0), Bid(3, 2.0)], 1: [1], 0: [np.int64(0)]}
    assert list(by_client(items)) == [3, 1, 0]


# --- the registry ----------------------------------------------------------------------------------


def test_build_selector_knows_the_shipped_kinds_and_import_paths():
    for kind in SELECTORS:
        sel = build_selector(load_config(kind, TINY))
        assert isinstance(sel, Selector)
    cfg = load_config("random", TINY)
    custom = dataclasses.replace(
        cfg,
        selection=dataclasses.replace(
            cfg.selection, kind="custom_selectors:least_picked", params={"payment": 2.0}
        ),
    )
    assert set(build_selector(custom).handlers) == {"probe"}


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("randomm", {}, "is not a known selector"),
        ("no_such_module_xyz:f", {}, "cannot import 'no_such_module_xyz'"),
        ("custom_selectors:nope", {}, "has no attribute 'nope'"),
        ("custom_selectors:least_picked", {"paymnt": 1.0}, "did you mean 'payment'?"),
        ("custom_selectors:least_picked", {"payment": "high"}, "must be float"),
        ("custom_selectors:Probe", {"client_id": 0, "loss": 0.1}, "not a rayfl Selector"),
    ],
)
def test_build_selector_errors_are_one_line(kind, params, message):
    cfg = load_config("random", TINY)
    # The config checks the name and the params; build_selector what the factory returns.
    with pytest.raises(RayflError) as e:
        selection = dataclasses.replace(cfg.selection, kind=kind, params=params)
        build_selector(dataclasses.replace(cfg, selection=selection))
    one_line_error(e, "selection.", message)


def test_a_handler_must_declare_its_reply_types():
    for replies in ((), [Bid], ("Bid",)):
        sel = Selector(lambda n: None, lambda c, s, a: (Selection([]), s), {"q": (print, replies)})
        with pytest.raises(RayflError, match="handler 'q' must be a QueryHandler"):
            checked_selector("k", sel)
        sel = sel._replace(handlers={"q": QueryHandler(print, replies)})
        with pytest.raises(RayflError, match="non-empty tuple of the reply types"):
            checked_selector("k", sel)
    cfg = load_config("random", TINY)
    with pytest.raises(ConfigError, match="is not a known selector"):
        build_selector(
            dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, kind="a b"))
        )


# --- one contract for every shipped selector -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FakeClient:
    """A :class:`~rayfl.selection.api.ClientView` in process: seeded losses, the run's traits."""

    client_id: int
    t: int
    cfg: Any
    data_size: int
    reference_time: float
    weights: Any = None

    def loss(self) -> float:
        return float(seeding.rng(self.cfg.seed, 999, self.client_id, self.t).uniform(0.1, 3.0))

    def traits(self):
        return draw_client(
            self.client_id, self.cfg.seed, self.data_size, 0.5, self.cfg.incentive.population()
        )


def run_in_process(kind: str, rounds: int = 3) -> list[str]:
    """``rounds`` selections of ``kind`` with every query answered in process, checked as the
    engine checks them; their reprs."""
    cfg = load_config(kind, TINY)
    selector = build_selector(cfg)
    n = cfg.data.num_clients
    sizes = np.arange(1, n + 1, dtype=np.int64) * 10
    tau_ref = float(np.median(cfg.selection.epochs * sizes * 0.5))

    def asker(t: int):
        def ask(query: str, items: Any, payload: Any = None) -> list[Any]:
            handler = selector.handlers[query]
            out: list[Any] = []
            for i, mine in by_client(list(items)).items():
                got = handler.handle(FakeClient(i, t, cfg, int(sizes[i]), tau_ref), mine, payload)
                out.extend(got if isinstance(got, list) else [got])
            check_replies(kind, query, handler, out)
            return out

        return ask

    state = selector.init(n)
    seen = []
    for t in range(rounds):
        m = num_selected(cfg.selection.k_fraction, n)
        ctx = RoundContext(
            t, n, m, sizes, seeding.rng(cfg.seed, seeding.SELECTION, t), (0.1,) * (t + 1), cfg
        )
        sel, state = checked_selection(kind, selector.select(ctx, state, asker(t)), ctx)
        assert np.isfinite(sel.payments).all()
        assert set(sel.record) == set(SHIPPED_COLUMNS)  # the three shipped files line up
        assert all(isinstance(k, str) for k in sel.metrics)
        arrays: dict = {}  # what a checkpoint does to it: JSON + arrays, then the classes back
        data = json.loads(json.dumps(safestate.encode(state, arrays)))
        state = safestate.conform(safestate.decode(data, arrays), selector.init(n), kind)
        seen.append(repr((sel.clients.tolist(), sel.payments.tolist(), sel.record, state)))
    return seen


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_every_shipped_selector_runs_and_repeats_itself_for_the_same_seed(kind):
    first = run_in_process(kind)
    assert first == run_in_process(kind)
    assert any(not s.startswith("([]") for s in first)  # not every round skipped

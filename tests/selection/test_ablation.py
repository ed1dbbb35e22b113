"""The incentive mechanism's ablation (issue 15): its switches, one at a time, on a hand-built
population, the shipped selector reading them from the config, and the ablation's table.

The population is the one of ``test_selectors.py``'s written-out round: N = 4 clients bidding
0: 1, 1: 6, 2: 7, 3: 100; K = 0.5 -> M = 2; R_S = 10 -> cap 5. The full mechanism selects 0
(bargained to the midpoint 3) and then, under R' = 7, client 1 (6.5), and carries 0.5 over.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayfl import seeding
from rayfl.config import load_config
from rayfl.errors import ConfigError
from rayfl.reproduce.incentive import Arm, per_round_means
from rayfl.reproduce.incentive_ablation import ARMS, format_ablation
from rayfl.selection import BargainParams, Bid, ClientPrivate, client_reply, select_incentive
from rayfl.selection.api import RoundContext
from rayfl.selection.selectors import FULL_MECHANISM, MechanismParts
from rayfl.selection.shipped import incentive_selector

BIDS = {0: 1.0, 1: 6.0, 2: 7.0, 3: 100.0}


class Bidders:
    """Clients with the given bids; they bargain with :func:`client_reply` (delta_i = delta_S,
    beta_i = beta_S: the bargain lands on the midpoint). Counts the offers they are sent."""

    def __init__(self, bids=BIDS):
        self.amount = dict(bids)
        self.private = {i: ClientPrivate(i, 1.0, 1.0, 0.95, 0.002, 100, 0.5) for i in bids}
        self.offers_received = 0

    def bids(self, client_ids, cap):
        return [Bid(int(i), self.amount[int(i)]) for i in client_ids]

    def replies(self, offers, cap):
        self.offers_received += len(offers)
        return [
            client_reply(self.private[o.client_id], self.amount[o.client_id], cap, 0.95, o)
            for o in offers
        ]


def one_round(parts=FULL_MECHANISM, *, carry=0.0, clients=None, **kwargs):
    clients = Bidders() if clients is None else clients
    return select_incentive(
        sorted(clients.amount),
        carry,
        10.0,
        0.5,
        clients.bids,
        clients.replies,
        BargainParams(),
        seeding.rng(0, seeding.SELECTION, 0),
        parts=parts,
        **kwargs,
    )


# --- the switches on select_incentive --------------------------------------------------------------


def test_full_mechanism_is_the_default_and_unchanged():
    default = select_incentive(
        sorted(BIDS),
        0.0,
        10.0,
        0.5,
        Bidders().bids,
        Bidders().replies,
        BargainParams(),
        seeding.rng(0, seeding.SELECTION, 0),
    )
    explicit = one_round(MechanismParts(True, True, True))
    for r in (default, explicit):
        assert r.selected.tolist() == [0, 1]
        np.testing.assert_allclose(r.payments, [3.0, 6.5], atol=1e-12)
        assert r.steps.tolist() == [500, 500]
        assert r.carried == pytest.approx(0.5)
        assert r.announced_caps == pytest.approx((5.0, 7.0))
    assert default.metrics() == pytest.approx(explicit.metrics(), nan_ok=True)


def test_without_bargaining_a_selected_bidder_is_paid_its_bid():
    clients = Bidders()
    r = one_round(MechanismParts(bargaining=False), clients=clients)
    # pass 1: client 0 is paid its bid 1; pool 9 for one slot -> cap 9: client 1 is paid 6
    assert r.selected.tolist() == [0, 1]
    np.testing.assert_array_equal(r.payments, r.bids)
    np.testing.assert_array_equal(r.payments, [1.0, 6.0])
    assert r.steps.tolist() == [0, 0] and clients.offers_received == 0  # no offer exchanged
    assert r.announced_caps == pytest.approx((5.0, 9.0))
    assert r.carried == pytest.approx(3.0)
    np.testing.assert_allclose(r.server_utility, 1.0)  # the server keeps the whole surplus


def test_without_additional_selection_only_the_first_pass_selects():
    r = one_round(MechanismParts(additional_selection=False))
    assert r.selected.tolist() == [0]  # client 1 (bid 6) is above the first cap 5
    np.testing.assert_allclose(r.payments, [3.0], atol=1e-12)
    assert r.announced_caps == pytest.approx((5.0,)) and r.num_candidates == (1,)
    assert r.carried == pytest.approx(7.0)  # with carry-over, the open slot's share is kept


def test_without_carry_over_the_unspent_budget_is_dropped():
    r = one_round(MechanismParts(carry_over=False), carry=2.0)
    assert r.budget == 12.0  # what came in is still spent this round
    assert r.carried == 0.0
    assert r.metrics()["incentive/carried"] == 0.0
    assert r.metrics()["incentive/leftover"] > 0  # unspent, but not carried
    assert one_round(MechanismParts(carry_over=False), carry=r.carried).budget == 10.0


def test_bids_only_is_the_first_pass_at_the_bids_with_nothing_carried():
    r = one_round(MechanismParts(False, False, False), carry=4.0)
    assert r.budget == 14.0 and r.announced_caps == pytest.approx((7.0,))
    assert r.selected.tolist() == [0, 1]  # cap 7: both 1 and 6 qualify in the first pass
    np.testing.assert_array_equal(r.payments, [1.0, 6.0])
    assert r.carried == 0.0 and r.steps.tolist() == [0, 0]


def test_a_skipped_round_drops_its_budget_without_carry_over():
    r = one_round(MechanismParts(carry_over=False), clients=Bidders({0: 50.0, 1: 60.0}))
    assert r.skipped and r.carried == 0.0


# --- the config and the shipped selector -----------------------------------------------------------


def test_config_defaults_are_the_full_mechanism():
    assert load_config("incentive").incentive.mechanism() == FULL_MECHANISM
    cfg = load_config("incentive", ["incentive.bargaining=false", "incentive.carry_over=false"])
    assert cfg.incentive.mechanism() == MechanismParts(False, True, False)


@pytest.mark.parametrize(
    "override",
    ["incentive.bargaining=3", "incentive.additional_selection=maybe", "incentive.carry_over=0"],
)
def test_a_switch_that_is_not_a_bool_is_a_one_line_config_error(override):
    with pytest.raises(ConfigError) as err:
        load_config("incentive", [override])
    message = str(err.value)
    assert override.split("=")[0] in message and "true or false" in message
    assert "\n" not in message


def _shipped_rounds(overrides, rounds=2):
    """``rounds`` rounds of the shipped incentive selector, its state threaded through."""
    cfg = load_config("incentive", ["selection.k_fraction=0.5", *overrides])
    selector, clients = incentive_selector(), Bidders()

    def ask(query, ids_or_offers, cap):
        return (clients.bids if query == "bid" else clients.replies)(ids_or_offers, cap)

    state, out = selector.init(len(BIDS)), []
    for t in range(rounds):
        ctx = RoundContext(
            t, len(BIDS), 2, np.full(4, 100), seeding.rng(0, seeding.SELECTION, t), (), cfg
        )
        selection, state = selector.select(ctx, state, ask)
        out.append(selection.record)
    return out


def test_the_shipped_selector_reads_the_switches():
    full = _shipped_rounds([])
    assert full[0]["carried"] == pytest.approx(0.5) and full[1]["budget"] == pytest.approx(10.5)
    dropped = _shipped_rounds(["incentive.carry_over=false"])
    assert dropped[0]["carried"] == 0.0 and dropped[1]["budget"] == 10.0
    unbargained = _shipped_rounds(["incentive.bargaining=false"], rounds=1)
    assert unbargained[0]["steps"] == [0, 0] and unbargained[0]["bids"] == [1.0, 6.0]


# --- the ablation's table --------------------------------------------------------------------------


def _record(arm, seed, t75, final, clients=10.0, budget=math.nan, paid=math.nan, carried=math.nan):
    return {
        "arm": arm,
        "seed": seed,
        "t75": t75,
        "final_accuracy": final,
        "clients_per_round": clients,
        "budget_per_round": budget,
        "paid_per_round": paid,
        "unspent_per_round": budget - paid,
        "carried_per_round": carried,
    }


def test_format_ablation_on_synthetic_records():
    runs = [
        _record("random", 0, 20, 0.84),
        _record("random", 1, None, 0.70),
        _record("pow-d", 0, 15, 0.87),
        _record("pow-d", 1, 17, 0.85),
        _record("bids-only", 0, 16, 0.86, 9.0, 10.0, 0.5, 0.0),
        _record("bids-only", 1, 18, 0.84, 10.0, 10.0, 1.5, 0.0),
    ]
    table = format_ablation(runs, 60, ARMS)
    lines = table.splitlines()
    assert lines[0].startswith("| arm | seeds | t75 (rounds) | reached 75 % | final accuracy %")
    assert "| random | 2 | 20.00 ± 0.00 | 1/2 | 77.00 ± 9.90 | 10.00 ± 0.00 | n/a |" in table
    assert "| pow-d | 2 | 16.00 ± 1.41 | 2/2 | 86.00 ± 1.41 |" in table
    row = next(line for line in lines if line.startswith("| bids-only |"))
    assert row == (
        "| bids-only | 2 | 17.00 ± 1.41 | 2/2 | 85.00 ± 1.41 | 9.50 ± 0.71 | 10.00 ± 0.00 "
        "| 1.00 ± 0.71 | 9.00 ± 0.71 | 0.00 ± 0.00 |"
    )
    assert not any(line.startswith("| +bargaining |") for line in lines)  # no runs: no row
    assert "within 60 rounds" in table
    assert "`incentive.bargaining=false`" in table  # the arms' overrides are listed


def test_ablation_arms_add_one_part_at_a_time():
    switches = [
        load_config(a.preset, list(a.overrides)).incentive.mechanism()
        for a in ARMS
        if a.preset == "incentive"
    ]
    assert switches == [
        MechanismParts(False, False, False),
        MechanismParts(True, False, False),
        MechanismParts(True, True, False),
        FULL_MECHANISM,
    ]
    assert [a.preset for a in ARMS[:2]] == ["random", "pow-d"]


def test_per_round_means_of_a_metrics_frame():
    pd = pytest.importorskip("pandas")
    incentive = pd.DataFrame(
        {
            "agg/k": [10, 8],
            "incentive/budget": [10.0, 14.0],
            "incentive/payments": [6.0, 8.0],
            "incentive/carried": [4.0, 6.0],
        }
    )
    assert per_round_means(incentive) == {
        "clients_per_round": 9.0,
        "budget_per_round": 12.0,
        "paid_per_round": 7.0,
        "unspent_per_round": 5.0,
        "carried_per_round": 5.0,
    }
    random = per_round_means(pd.DataFrame({"agg/k": [10, 10]}))
    assert random["clients_per_round"] == 10.0 and math.isnan(random["paid_per_round"])


def test_arm_run_folders_are_named_after_the_arms():
    assert len({a.name for a in ARMS}) == len(ARMS)
    assert all("/" not in a.name and " " not in a.name for a in ARMS)
    assert Arm("x", "random").overrides == ()

"""Client selection (random, pow-d, the incentive mechanism) and the bargaining maths; numpy only.

A selector is a :class:`Selector` (``init``, ``select``, query handlers; :mod:`rayfl.selection.api`);
the shipped ones and :func:`build_selector` are in :mod:`rayfl.selection.shipped`.

Experiment B lives in :mod:`rayfl.selection.experiment_b` (not re-exported, so that
``python -m rayfl.selection.experiment_b`` runs it cleanly).
"""

from rayfl.selection.api import (
    Ask,
    ClientView,
    QueryHandler,
    RoundContext,
    Selection,
    Selector,
)
from rayfl.selection.bargaining import (
    BargainParams,
    BargainResult,
    ape,
    ape_from_log,
    bargain,
    bargain_steps,
    log_nash_product,
    log_nash_product_coupled,
    nash_product_coupled,
    nash_product_separable,
    nbs_coupled,
    nbs_separable,
)
from rayfl.selection.messages import (
    Bid,
    BidParams,
    ClientPrivate,
    LocalClients,
    LossReport,
    Offer,
    Response,
    client_reply,
    make_bid,
)
from rayfl.selection.population import (
    POPULATIONS,
    PopulationParams,
    draw_client,
    draw_population,
    reference_time,
)
from rayfl.selection.selectors import (
    IncentiveRound,
    PowDRound,
    num_selected,
    select_incentive,
    select_pow_d,
    select_random,
)
from rayfl.selection.shipped import (
    SELECTORS,
    build_selector,
    incentive_selector,
    pow_d_selector,
    random_selector,
)

__all__ = [
    "POPULATIONS",
    "SELECTORS",
    "Ask",
    "ClientView",
    "QueryHandler",
    "RoundContext",
    "Selection",
    "Selector",
    "BargainParams",
    "BargainResult",
    "Bid",
    "BidParams",
    "ClientPrivate",
    "IncentiveRound",
    "LocalClients",
    "LossReport",
    "Offer",
    "PopulationParams",
    "PowDRound",
    "Response",
    "ape",
    "ape_from_log",
    "bargain",
    "bargain_steps",
    "build_selector",
    "client_reply",
    "draw_client",
    "draw_population",
    "incentive_selector",
    "log_nash_product",
    "log_nash_product_coupled",
    "make_bid",
    "nash_product_coupled",
    "nash_product_separable",
    "nbs_coupled",
    "nbs_separable",
    "num_selected",
    "pow_d_selector",
    "random_selector",
    "reference_time",
    "select_incentive",
    "select_pow_d",
    "select_random",
]

"""The private client population of the incentive mechanism (spec sections 3, 5 and 9).

Per client, drawn once from ``seeding.rng(seed, INCENTIVE_POPULATION, client_id)`` (so a client's
traits do not depend on how many clients there are):

- sensitivities gamma_i ~ N(gamma_mean, gamma_std), mu_i ~ N(mu_mean, mu_std), truncated to > 0 by
  *redrawing* (rejection, i.e. the exact truncated normal; with the defaults N(1, 0.3) a redraw
  happens for ~1 draw in 2,600);
- discount factor delta_i ~ U(delta_i_low, delta_i_high);
- concession rate beta_i ~ U(beta_i_low, beta_i_high).

The draw order is fixed (gamma, mu, delta_i, beta_i). :data:`POPULATIONS` holds the three
populations of the Experiment B sensitivity table (section 9). Data sizes and speeds come from the
partition and the clock; this module only attaches them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rayfl import seeding
from rayfl.errors import ConfigError
from rayfl.selection.messages import ClientPrivate
from rayfl.validation import check_real

_MAX_REDRAWS = 1000  # gamma_mean, mu_mean > 0 make a redraw succeed with probability > 1/2


@dataclasses.dataclass(frozen=True)
class PopulationParams:
    """How the clients' private incentive traits are drawn (spec sections 3 and 5)."""

    gamma_mean: float = 1.0
    """Mean of gamma_i ~ N(mean, std) truncated to > 0; > 0."""
    gamma_std: float = 0.3
    """Standard deviation of gamma_i, >= 0."""
    mu_mean: float = 1.0
    """Mean of mu_i ~ N(mean, std) truncated to > 0; > 0."""
    mu_std: float = 0.3
    """Standard deviation of mu_i, >= 0."""
    delta_i_low: float = 0.94
    """delta_i ~ U(delta_i_low, delta_i_high), inside (0, 1)."""
    delta_i_high: float = 0.96
    """Upper end of the delta_i range."""
    beta_i_low: float = 0.0019
    """beta_i ~ U(beta_i_low, beta_i_high), > 0."""
    beta_i_high: float = 0.0021
    """Upper end of the beta_i range."""

    def __post_init__(self) -> None:
        for name in ("gamma", "mu"):
            check_real(
                f"incentive.{name}_mean",
                getattr(self, f"{name}_mean"),
                low=0.0,
                low_open=True,
                fix="use a mean > 0, e.g. 1.0",
            )
            check_real(
                f"incentive.{name}_std",
                getattr(self, f"{name}_std"),
                low=0.0,
                fix="use a standard deviation >= 0, e.g. 0.3",
            )
        for end in ("low", "high"):
            check_real(
                f"incentive.delta_i_{end}",
                getattr(self, f"delta_i_{end}"),
                low=0.0,
                high=1.0,
                low_open=True,
                high_open=True,
                fix="use a discount factor in (0, 1), e.g. 0.94 and 0.96",
            )
            check_real(
                f"incentive.beta_i_{end}",
                getattr(self, f"beta_i_{end}"),
                low=0.0,
                low_open=True,
                fix="use a concession rate > 0, e.g. 0.0019 and 0.0021",
            )
        for name in ("delta_i", "beta_i"):
            low, high = getattr(self, f"{name}_low"), getattr(self, f"{name}_high")
            if high < low:
                raise ConfigError(
                    f"incentive.{name}_high={high!r} is below incentive.{name}_low={low!r}: "
                    "swap them"
                )


POPULATIONS: dict[str, PopulationParams] = {
    "default": PopulationParams(),
    "narrow": PopulationParams(
        delta_i_low=0.949, delta_i_high=0.951, beta_i_low=0.00199, beta_i_high=0.00201
    ),
    "wide": PopulationParams(
        delta_i_low=0.8, delta_i_high=0.99, beta_i_low=0.001, beta_i_high=0.003
    ),
}
"""The populations of the Experiment B sensitivity table (spec section 9)."""


def population_params(population: str | PopulationParams) -> PopulationParams:
    """A :class:`PopulationParams` from a name in :data:`POPULATIONS` or the params themselves."""
    if isinstance(population, PopulationParams):
        return population
    if population not in POPULATIONS:
        raise ConfigError(
            f"incentive.population={population!r} is not known: use one of {', '.join(POPULATIONS)}"
        )
    return POPULATIONS[population]


def _positive_normal(
    rng: np.random.Generator, mean: float, std: float, shape: tuple[int, ...]
) -> np.ndarray:
    """N(mean, std) truncated to > 0 by redrawing the entries <= 0 (exact truncated normal)."""
    x = rng.normal(mean, std, size=shape)
    for _ in range(_MAX_REDRAWS):
        bad = x <= 0
        if not bad.any():
            return x
        x[bad] = rng.normal(mean, std, size=int(bad.sum()))
    raise RuntimeError("truncated normal: too many redraws")  # pragma: no cover (mean > 0)


def draw_bargaining_traits(
    rng: np.random.Generator, shape: tuple[int, ...], params: PopulationParams
) -> tuple[np.ndarray, np.ndarray]:
    """(delta_i, beta_i) arrays of ``shape``: delta first, then beta (Experiment B's draw)."""
    delta_i = rng.uniform(params.delta_i_low, params.delta_i_high, size=shape)
    beta_i = rng.uniform(params.beta_i_low, params.beta_i_high, size=shape)
    return delta_i, beta_i


def draw_client(
    client_id: int,
    seed: int,
    data_size: int,
    speed: float,
    params: PopulationParams | None = None,
) -> ClientPrivate:
    """One client's private traits from ``seeding.rng(seed, INCENTIVE_POPULATION, client_id)``.

    Args:
        client_id: i >= 0.
        seed: the run's seed.
        data_size: |D_i| from the partition.
        speed: the clock's a_i, virtual time units per sample.
        params: the population; the defaults of the spec when None.
    """
    p = PopulationParams() if params is None else params
    r = seeding.rng(seed, seeding.INCENTIVE_POPULATION, client_id)
    gamma = _positive_normal(r, p.gamma_mean, p.gamma_std, (1,))[0]
    mu = _positive_normal(r, p.mu_mean, p.mu_std, (1,))[0]
    delta_i, beta_i = draw_bargaining_traits(r, (1,), p)
    return ClientPrivate(
        client_id=int(client_id),
        gamma=float(gamma),
        mu=float(mu),
        delta_i=float(delta_i[0]),
        beta_i=float(beta_i[0]),
        data_size=int(data_size),
        speed=float(speed),
    )


def draw_population(
    data_sizes: Sequence[int] | np.ndarray,
    speeds: Sequence[float] | np.ndarray,
    seed: int,
    params: PopulationParams | None = None,
) -> list[ClientPrivate]:
    """Every client's :class:`ClientPrivate`, client i from its own generator (see module doc).

    Args:
        data_sizes: (N,) |D_i|.
        speeds: (N,) the clock's a_i (``SpeedModel.speed``).
        seed: the run's seed.
        params: the population; the spec's defaults when None.
    """
    if len(data_sizes) != len(speeds):
        raise ValueError(f"{len(data_sizes)} data sizes but {len(speeds)} speeds")
    return [
        draw_client(i, seed, int(n), float(a), params)
        for i, (n, a) in enumerate(zip(data_sizes, speeds, strict=True))
    ]


def reference_time(population: Sequence[ClientPrivate], epochs: int) -> float:
    """tau_ref = the median training time tau_i over clients (section 3), virtual time units.

    A public normaliser of the simulation, computed once from the speed model; it makes
    mu_i * tau_i / tau_ref O(1).
    """
    if not population:
        raise ValueError("tau_ref of an empty population")
    return float(np.median([p.training_time(epochs) for p in population]))

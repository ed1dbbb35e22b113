"""Synchronous FedAvg rounds with client selection (incentive spec of record, sections 1-9).

``mode: sync`` in a config makes ``rayfl.run`` call :func:`run_rounds`: each round a selector
(random, pow-d or the incentive mechanism) picks the clients, they train E local epochs from w(t)
in parallel on the client worker pool, and the server averages them (FedAvg).

- :mod:`rayfl.rounds.client`: the client side, inside the workers (private numbers stay there);
- :mod:`rayfl.rounds.loop`: the server side, one round at a time (:class:`RoundServer`);
- :mod:`rayfl.rounds.driver`: the run folder, progress bar and ``rounds.parquet``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayfl.rounds.driver import run_rounds

__all__ = ["run_rounds"]


def __getattr__(name: str) -> Any:
    # Lazy: the client workers import rayfl.rounds.client, which must not pull in the driver.
    if name == "run_rounds":
        from rayfl.rounds.driver import run_rounds

        return run_rounds
    raise AttributeError(f"module 'rayfl.rounds' has no attribute {name!r}")

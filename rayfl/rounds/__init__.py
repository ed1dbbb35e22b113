"""Synchronous FedAvg rounds with client selection (incentive spec of record, sections 1-9).

``mode: sync`` in a config makes ``rayfl.run`` use this engine: each round a selector (random,
pow-d or the incentive mechanism) picks the clients, they train E local epochs from w(t) in
parallel on the client worker pool, and the server averages them (FedAvg).

- :mod:`rayfl.clients.rounds`: the client side, inside the workers (private numbers stay there);
- :mod:`rayfl.rounds.loop`: the server side, one round at a time (:class:`RoundServer`);
- :mod:`rayfl.rounds.records`: ``rounds.parquet`` and the summary's numbers (``t75``);
- :mod:`rayfl.rounds.engine`: the engine the run driver drives (:mod:`rayfl.runtime`).
"""

"""rayfl_extras: a small user package that extends rayfl without touching it.

Each module holds one kind of extension, named from a config by import path:

- ``rayfl_extras.rules:adaptive_clip``, ``rayfl_extras.rules:trimmed_mean``: aggregation rules;
- ``rayfl_extras.optimizers:server_momentum``: a server optimizer with state;
- ``rayfl_extras.partitioners:quantity_skew``: a partitioner;
- ``rayfl_extras.selectors:utility_bandit``: a selector that queries the clients;
- ``rayfl_extras.tasks:ClientMomentum``: a client task with per-client state;

``experiment.yaml`` (K-async) and ``sync-experiment.yaml`` (rounds) beside this folder use them. Run it with
``rayfl run examples/experiment.yaml --py-module examples/rayfl_extras``.
"""

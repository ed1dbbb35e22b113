"""rayfl_extras: a small user package that extends rayfl without touching it.

Each module holds one kind of extension, named from a config by import path:

- ``rayfl_extras.rules:adaptive_clip``, ``rayfl_extras.rules:trimmed_mean``: aggregation rules;
- ``rayfl_extras.optimizers:server_momentum``: a server optimizer with state;
- ``rayfl_extras.partitioners:quantity_skew``: a partitioner;

``experiment.yaml`` beside this folder uses them all. Run it with
``rayfl run examples/experiment.yaml --py-module examples/rayfl_extras``.
"""

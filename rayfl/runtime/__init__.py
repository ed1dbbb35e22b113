"""What every run needs, whatever its engine (K-async or synchronous rounds).

- :mod:`~rayfl.runtime.folder`: the run folder (new, resumed, or staged for a storage URI);
- :mod:`~rayfl.runtime.data`: the data set and its partition, put in the object store once;
- :mod:`~rayfl.runtime.session`: the Ray session (started only if none is running);
- :mod:`~rayfl.runtime.checkpoint`: checkpoint files;
- :mod:`~rayfl.runtime.engine`: the interface an engine implements;
- :mod:`~rayfl.runtime.driver`: the one loop that drives an engine: progress bar, metrics,
  checkpoints, Ctrl-C / SIGTERM, summary.json.
"""

"""Where the rule chain computes: numpy on the host, or torch on the server's device.

``aggregation.backend``:

- ``numpy``: the (K, P) updates, the model and the rules' states are numpy arrays (the default on
  a CPU server, and what every golden and paper number was made with);
- ``torch``: they are torch tensors on the server's device, its GPU when ``server.num_gpus`` gives
  it one (else the CPU: useful to test a rule on both); the updates cross to the device once, as
  one (K, P) stack, and w_{t+1} comes back once, for the object store;
- ``auto`` (default): ``torch`` when the server has a GPU and every rule and the optimizer accept
  it, else ``numpy``.

A rule or optimizer says which it accepts in its ``backends`` (``Rule.backends``; the shipped
rules and optimizers of the spec accept both, via :mod:`rayfl.aggregation.arrays`); the chain
runs on one backend, so a chain with a numpy-only part runs on numpy (``auto``), or is a one-line
error (``torch``). States are checkpointed as numpy on either backend (:func:`to_host_tree`), so a
run checkpointed on a GPU server resumes on a CPU one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayfl.aggregation import arrays
from rayfl.aggregation.base import BACKENDS, Rule, ServerOptimizer
from rayfl.errors import ConfigError

CHOICES = ("auto", *BACKENDS)
FIELD = "aggregation.backend"


def choose(
    choice: str,
    rules: Sequence[tuple[str, Rule]],
    optimizer: tuple[str, ServerOptimizer],
    has_gpu: bool,
) -> str:
    """The backend the chain runs on ("numpy" or "torch") for ``aggregation.backend=choice``;
    a ConfigError naming the parts that cannot run on the one asked for (or on any)."""
    parts = [*rules, optimizer]
    if choice in BACKENDS:
        refused = [name for name, p in parts if choice not in p.backends]
        if refused:
            raise ConfigError(
                f"{FIELD}={choice}: {', '.join(refused)} cannot run on {choice} (their "
                f"backends say {_accepted(parts, refused[0])}): set {FIELD}: auto, or make them "
                f"{choice}-ready (docs/extending.md, 'Rules on a GPU')"
            )
        return choice
    torch_ok = all("torch" in p.backends for _, p in parts)
    numpy_ok = all("numpy" in p.backends for _, p in parts)
    if torch_ok and (has_gpu or not numpy_ok):
        return "torch"
    if numpy_ok:
        return "numpy"
    numpy_only = [name for name, p in parts if "torch" not in p.backends]
    torch_only = [name for name, p in parts if "numpy" not in p.backends]
    raise ConfigError(
        f"{FIELD}: no backend runs the whole chain: {', '.join(numpy_only)} run on numpy only, "
        f"{', '.join(torch_only)} on torch only: make one side accept the other's backend"
    )


def _accepted(parts: Sequence[tuple[str, Any]], name: str) -> str:
    return "/".join(dict(parts)[name].backends) or "none"


class Placement:
    """Moves the chain's arrays between the host and the chain's backend.

    ``numpy``: every method is the identity (no copy, the same objects: the golden bytes).
    ``torch``: host arrays become tensors on ``device`` and back.
    """

    def __init__(self, kind: str, device: Any = "cpu"):
        if kind not in BACKENDS:
            raise ConfigError(f"{FIELD}={kind!r} is not one of {', '.join(CHOICES)}")
        self.kind = kind
        self.device = device

    def __repr__(self) -> str:
        return self.kind if self.kind == "numpy" else f"torch ({self.device})"

    def native(self, x: np.ndarray) -> arrays.Array:
        """A host array in the chain's backend (the same array on numpy)."""
        if self.kind == "numpy" or not isinstance(x, np.ndarray):
            return x
        import torch

        return torch.from_numpy(x).to(self.device)

    def native_tree(self, tree: Any) -> Any:
        """:meth:`native` of every array in a state tree (NamedTuples, dataclasses, tuples,
        lists, dicts), e.g. a state read from a checkpoint."""
        return tree if self.kind == "numpy" else map_arrays(tree, self.native)


def to_host_tree(tree: Any) -> Any:
    """Every tensor in a state tree as a numpy array (for a checkpoint); numpy trees unchanged."""
    return map_arrays(tree, arrays.to_host)


def map_arrays(tree: Any, fn: Any) -> Any:
    """``tree`` with ``fn`` applied to every leaf that is an array or tensor."""
    if isinstance(tree, np.ndarray) or arrays.is_tensor(tree):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return type(tree)(*(map_arrays(v, fn) for v in tree))
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {f.name: map_arrays(getattr(tree, f.name), fn) for f in dataclasses.fields(tree)}
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_arrays(v, fn) for v in tree)
    if isinstance(tree, dict):
        return {k: map_arrays(v, fn) for k, v in tree.items()}
    return tree

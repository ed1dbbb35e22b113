"""The client tasks rayfl ships, by name (``client.task``), and :func:`build_task`; no torch here.

The config validates ``client.task`` against :data:`TASKS` when it is built, in any process (the
CLI reading a YAML file, a Tune trial), so this module imports torch only inside functions: each
shipped name maps to a small factory that imports the task's module when a task is really built
(in a worker or the server's evaluator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rayfl.errors import ConfigError
from rayfl.registry import build

if TYPE_CHECKING:
    from rayfl.clients.task import ClientTask, DataSpec

TASK_FIELD = "client.task"
TASK_PARAMS_FIELD = "client.task_params"


def classification() -> Any:
    """Image classification: uint8 (C, H, W) images normalised with the data set's per-channel
    mean and std, cross-entropy, plain local SGD, no per-client state
    (:class:`rayfl.clients.task.ClientTask`'s defaults)."""
    from rayfl.clients.task import ClientTask

    return ClientTask()  # the base class's hooks are the classification task


def fedprox(mu: float = 0.01) -> Any:
    """FedProx (Li et al., MLSys 2020): classification whose local gradients get the proximal
    term mu (w - w_t), w_t the model received; mu >= 0, and mu = 0 is ``classification``
    (:class:`rayfl.clients.baselines.FedProx`)."""
    from rayfl.clients.baselines import FedProx

    return FedProx(check_fedprox(mu))


def check_fedprox(mu: float) -> float:
    """FedProx's mu, checked where the config is read (torch-free) and again in each worker."""
    from rayfl.validation import check_real

    return check_real(
        f"{TASK_PARAMS_FIELD}.mu", mu, low=0.0, fix="use a proximal coefficient >= 0, e.g. 0.01"
    )


def check_task_params(name: str, params: Mapping[str, Any]) -> None:
    """The values of a shipped task's parameters (their names are checked by the registry), so
    that a bad one fails when the config is read, not in a worker."""
    if name == "fedprox" and "mu" in params:
        check_fedprox(params["mu"])


def scaffold() -> Any:
    """SCAFFOLD, option II (Karimireddy et al., ICML 2020): classification whose local gradients
    are corrected by c - c_i, with a control variate c_i per client (its state) and the server's
    c from the ``scaffold`` rule, which ``aggregation.rules`` must include
    (:class:`rayfl.clients.baselines.Scaffold`)."""
    from rayfl.clients.baselines import Scaffold

    return Scaffold()


TASKS: dict[str, Callable[..., Any]] = {
    "classification": classification,
    "fedprox": fedprox,
    "scaffold": scaffold,
}
"""Shipped client tasks; ``client.task`` may also be an import path ``package.module:factory``."""


def build_task(name: str, params: Mapping[str, Any] | None, spec: DataSpec) -> ClientTask:
    """The task ``client.task`` names, built with ``client.task_params`` and set up for
    ``spec``; in each process that uses it (a worker, the server's evaluator).

    Raises:
        ConfigError: an unknown name, a module that does not import, params the factory does
            not take, a factory that does not return a :class:`ClientTask`, data the task's
            ``setup`` refuses.
    """
    from rayfl.clients.task import ClientTask

    task = build(TASK_FIELD, name, TASKS, params, "client task", params_field=TASK_PARAMS_FIELD)
    if not isinstance(task, ClientTask):
        raise ConfigError(
            f"{TASK_FIELD}={name!r} returned {type(task).__name__}, not a ClientTask: subclass "
            "rayfl.clients.task.ClientTask and override the hooks your task changes"
        )
    task.setup(spec)
    return task

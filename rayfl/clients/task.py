"""The client task: the one object that owns a client's learning problem (PyTorch, no Ray).

A task says how a mini-batch becomes tensors (``batch``), what is minimised (``loss``), how a
client's gradient is made from it (``gradient``: FedProx adds mu (w - w_v), SCAFFOLD the control
variates' difference c - c_i), how a local step moves the weights (``step``), what a client keeps
from one job to its next (``init_state`` and ``finish``: SCAFFOLD's c_i, a personalised head), and
how the server scores a global model (``evaluate``). The one local training loop
(:mod:`rayfl.clients.local`) calls these hooks for both engines; the server's evaluation
(:mod:`rayfl.evaluation`) calls ``batch`` and ``evaluate``.

``client.task`` names the task's factory: ``classification`` (:data:`~rayfl.clients.shipped.TASKS`)
or an import path ``package.module:factory`` to a user's, called with ``client.task_params``
(:func:`~rayfl.clients.shipped.build_task`, through :mod:`rayfl.registry`). A task is a subclass of :class:`ClientTask`
that overrides the hooks its problem changes; the defaults are today's image classification with
plain local SGD and no state, so the shipped presets compute the same bytes as before tasks
existed. A task is built in every process that uses it (each worker, the server), so it must not
rely on being shared; what must persist for a client goes in its state, which the server keeps
(:mod:`rayfl.clients.state`).

Example, FedProx (Li et al., MLSys 2020) in a user's package::

    class FedProx(ClientTask):
        def __init__(self, mu: float = 0.01):
            self.mu = mu

        def gradient(self, model, params, inputs, targets, ctx):
            g, loss = super().gradient(model, params, inputs, targets, ctx)
            w = torch.cat([p.detach().reshape(-1) for p in params])
            return g + self.mu * (w - ctx.start), loss
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayfl.errors import ConfigError, RayflError


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a task learns of the run's data set in :meth:`ClientTask.setup`."""

    input_shape: tuple[int, ...]  # one sample's shape, e.g. (1, 28, 28) or (8,)
    dtype: np.dtype  # the samples' dtype: uint8 for the shipped image sets
    num_classes: int  # the data set's num_classes (the model's output width)
    mean: tuple[float, ...]  # per-channel normalisation, [0, 1] scale; may be empty
    std: tuple[float, ...]

    @classmethod
    def of(
        cls, x: np.ndarray, num_classes: int, mean: Sequence[float], std: Sequence[float]
    ) -> DataSpec:
        """The spec of samples ``x`` (N, ...) with the data set's constants."""
        shape = tuple(int(d) for d in x.shape[1:])
        return cls(shape, np.dtype(x.dtype), int(num_classes), tuple(mean), tuple(std))


@dataclasses.dataclass(eq=False)
class TaskContext:
    """One job of one client, as the task's hooks see it; it lives for that job only."""

    client_id: int
    version: int  # K-async: the job's version v; synchronous rounds: the round t
    weights: np.ndarray  # (P,) float32: the global model the client received (read-only)
    state: Any  # the client's state before this job: the server's copy, or init_state's
    lr: float  # client.local_lr
    device: torch.device
    # What the server's rules broadcast with the model this job is on (Rule.broadcast): e.g.
    # SCAFFOLD's server control variate, server["c"]. Read-only numpy arrays; empty if none.
    server: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def start(self) -> torch.Tensor:
        """``weights`` as a (P,) float32 tensor on the device, made on first use (a task that
        never asks pays nothing)."""
        return torch.tensor(self.weights, dtype=torch.float32, device=self.device)


class Normalizer:
    """uint8 (n, C, H, W) numpy images -> normalised float32 tensors on a device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=device))).view(
            1, -1, 1, 1
        )
        self.mean255 = self.mean * 255.0

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device, non_blocking=True).float()
        return (x - self.mean255) * self.scale


class ClientTask:
    """A client's learning problem. Every hook has a default, and the defaults together are the
    shipped ``classification`` task: uint8 images, cross-entropy, plain SGD, no state.

    Override what your problem changes. Hooks receive flat (P,) float32 tensors in
    ``model.parameters()`` order where they see weights or gradients. A task that overrides
    ``setup`` calls ``super().setup(spec)``.
    """

    spec: DataSpec

    batchable: ClassVar[bool] = False
    """True declares that ``batch`` and ``loss`` can run under ``torch.func.vmap`` over a worker's
    jobs (``client.batched``, :mod:`rayfl.clients.batched`): ``batch`` returns one tensor of
    inputs and one of targets, of the same shapes for every mini-batch of B samples, and
    ``loss`` only calls ``model(inputs)`` (no other use of the module, no ``.item()``, no
    in-place writes to its inputs). ``gradient`` and ``step`` must stay the defaults. The
    default task is batched without declaring it."""

    def setup(self, spec: DataSpec) -> None:
        """Called once per process, before any other hook, with the run's data set.

        The default keeps ``spec``; with the default :meth:`batch` it checks that the data are
        images it can normalise (a ConfigError naming ``client.task`` otherwise).
        """
        self.spec = spec
        if type(self).batch is ClientTask.batch:
            check_images(spec)

    def batch(self, x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[Any, Any]:
        """One mini-batch's samples and targets (numpy, a copy) -> (inputs, targets) for the
        model on ``device``. Default: uint8 (n, C, H, W) images normalised per channel with the
        data set's mean and std, float32; int64 labels."""
        normalize = self.__dict__.get("_normalize")
        if normalize is None or normalize.device != device:
            normalize = self._normalize = Normalizer(self.spec.mean, self.spec.std, device)
        return normalize(x), torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)

    def loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """The scalar loss to minimise on one mini-batch. Default: mean cross-entropy."""
        return F.cross_entropy(model(inputs), targets)

    def gradient(
        self,
        model: nn.Module,
        params: Sequence[torch.Tensor],
        inputs: Any,
        targets: Any,
        ctx: TaskContext,
    ) -> tuple[torch.Tensor, float]:
        """(the flat (P,) float32 gradient on the device, the mini-batch loss) at the model's
        current weights. Default: autograd of :meth:`loss`. Checked by the loop: another shape
        or dtype is an error naming ``client.task``."""
        loss = self.loss(model, inputs, targets)
        grads = torch.autograd.grad(loss, params)
        return torch.cat([g.reshape(-1) for g in grads]), float(loss.detach())

    @torch.no_grad()
    def step(
        self, params: Sequence[torch.Tensor], grad: torch.Tensor, lr: float, ctx: TaskContext
    ) -> None:
        """One local step: updates ``params`` in place (and must not write into ``grad``: with
        one local step the K-async update is that gradient). Default: SGD, w <- w - lr g."""
        offset = 0
        for p in params:
            n = p.numel()
            p.sub_(lr * grad[offset : offset + n].view_as(p))
            offset += n

    def init_state(self, client_id: int, weights: np.ndarray) -> Any:
        """The state of a client the server holds none for, before its first job; ``weights``
        is the (P,) float32 model it received. Default: None, no state (nothing is sent or
        stored for the client). A state must pickle: it goes into checkpoints."""
        return None

    def finish(self, ctx: TaskContext, start: torch.Tensor, end: torch.Tensor, steps: int) -> Any:
        """The client's new state after local training from ``start`` (= ``ctx.start``) to
        ``end`` (flat weights) in ``steps`` local steps; the server keeps it once it accepts the
        update. Default: ``ctx.state`` unchanged. (Without an override and with one K-async
        local step, the step itself is skipped: nothing would see its result.)"""
        return ctx.state

    def report(
        self, ctx: TaskContext, start: torch.Tensor, end: torch.Tensor, steps: int
    ) -> Mapping[str, np.ndarray] | None:
        """What the client sends the server beside its update, after local training from
        ``start`` to ``end`` in ``steps`` steps (called after :meth:`finish`; ``ctx.state`` is
        still the state before the job): named numpy arrays that the server's rules read as
        ``step.reports[name]``, stacked over the iteration's updates (SCAFFOLD's
        delta c_i). Every update of a run must report the same names and shapes. Default: None,
        nothing (no extra bytes travel)."""
        return None

    def evaluate(self, model: nn.Module, inputs: Any, targets: Any) -> tuple[float, float]:
        """(summed loss, number correct) of the model on one evaluation batch; the server
        divides both by the number of samples (``eval/loss``, ``eval/accuracy``). A task without
        a notion of correct returns NaN. Default: cross-entropy and arg-max accuracy."""
        logits = model(inputs)
        loss = float(F.cross_entropy(logits, targets, reduction="sum"))
        return loss, int((logits.argmax(dim=1) == targets).sum())


def check_images(spec: DataSpec) -> None:
    """The default batch transform's input: uint8 (C, H, W) images, one mean and std per
    channel; else a ConfigError naming ``client.task``."""
    shape = spec.input_shape
    if len(shape) == 3 and spec.dtype == np.uint8 and len(spec.mean) == len(spec.std) == shape[0]:
        return
    raise ConfigError(
        f"client.task: the default batch transform normalises uint8 (C, H, W) images, but the "
        f"data set has {spec.dtype} samples of shape {shape} ({len(spec.mean)} means): set "
        "client.task to a task whose batch() handles them ('package.module:factory')"
    )


def checked_gradient(where: str, grad: Any, size: int) -> torch.Tensor:
    """``grad`` if it is a (size,) float32 tensor, else a one-line RayflError naming ``where``
    (the loop would fail later, far from the cause, or silently average wrong numbers)."""
    if isinstance(grad, torch.Tensor) and grad.dtype == torch.float32 and grad.shape == (size,):
        return grad
    got = (
        f"a {grad.dtype} tensor of shape {tuple(grad.shape)}"
        if isinstance(grad, torch.Tensor)
        else f"a {type(grad).__name__}"
    )
    raise RayflError(
        f"{where}: gradient() returned {got}, not the flat ({size},) float32 gradient of the "
        "model's parameters: concatenate every parameter's gradient in model.parameters() order"
    )


def checked_report(where: str, report: Any) -> dict[str, np.ndarray] | None:
    """``report`` as a dict of numpy arrays (None stays None), else a one-line RayflError naming
    ``where``: a report is stacked over an iteration's updates on the server."""
    if report is None:
        return None
    if isinstance(report, Mapping) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in report.items()
    ):
        return dict(report)
    raise RayflError(
        f"{where}: report() returned {type(report).__name__}, not a mapping of names to numpy "
        "arrays: return e.g. {'delta_c': array} (convert tensors with .cpu().numpy())"
    )

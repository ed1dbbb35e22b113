"""Batched client compute: a worker's K-async jobs in one ``torch.func`` call (``client.batched``).

The same local SGD as :meth:`LocalTrainer.update <rayfl.clients.local.LocalTrainer.update>`
(the same mini-batches, E steps of w <- w - lr g, the update g (E = 1) or (w_v - w^E) / lr, the
first mini-batch's loss), but each step is one ``vmap(grad_and_value(loss))`` over the jobs:
a GPU then runs a few large kernels instead of many B-sample ones. The jobs' weights are stacked
into a (J, P) tensor; jobs that share a version take one (P,) copy for their first step (vmap's
``in_dims=None``), which is also all that E = 1 ever needs.

The results equal the one-job path's within float tolerance, not bit for bit (a vmapped
convolution sums in another order), so ``client.batched: auto`` uses this only on CUDA: on CPU
the presets keep their bytes (and batching gave no speed-up there, issue 17).

It applies to the default task and to tasks that declare ``batchable = True``, with the default
``gradient`` and ``step``, on models without buffers (batch-norm statistics would have to be
updated per job); :func:`batched_jobs` says why not otherwise, and checks once on the worker's
own data that the two paths agree.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from rayfl.clients.local import LocalTrainer, Result
from rayfl.clients.task import ClientTask, TaskContext
from rayfl.errors import ConfigError, RayflError

BATCHED_FIELD = "client.batched"
PROBE_RTOL = 1e-3  # the probe's tolerance, relative to the largest update entry
log = logging.getLogger(__name__)


class JobArgs(NamedTuple):
    """One K-async job as :meth:`LocalTrainer.update` takes it."""

    client_id: int
    version: int
    weights: np.ndarray  # (P,) float32: the model the job computes on
    state: bytes | None = None  # the client's packed state
    server: Any = None  # the rules' broadcast with the weights (Rule.broadcast)


def unsupported(task: ClientTask, model: nn.Module) -> str | None:
    """Why jobs of ``task`` on ``model`` cannot be computed batched (a phrase), or None."""
    kind = type(task)
    for hook in ("gradient", "step"):
        if getattr(kind, hook) is not getattr(ClientTask, hook):
            return (
                f"client.task overrides {hook}() (the batched path computes autograd of loss() "
                "and plain SGD steps)"
            )
    own = [h for h in ("batch", "loss") if getattr(kind, h) is not getattr(ClientTask, h)]
    if own and not kind.batchable:
        return f"client.task overrides {own[0]}() and does not declare batchable = True"
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return (
            f"model.name has buffers ({buffers[0]}: batch-norm-like statistics vmap cannot "
            "update per job)"
        )
    return None


class _Functional:
    """The model with the given parameters, callable like the module: what a batched
    ``loss(model, inputs, targets)`` receives."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        self.model, self.params = model, params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.model, self.params, args, kwargs)


class BatchedJobs:
    """Computes K-async jobs together for one worker's :class:`LocalTrainer`; at most
    ``max_jobs`` in one vmapped computation (``client.max_batch_jobs``)."""

    def __init__(self, trainer: LocalTrainer, max_jobs: int):
        self.trainer = trainer
        self.max_jobs = max_jobs
        named = list(trainer.model.named_parameters())  # model.parameters() order, the flat one
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        step = torch.func.grad_and_value(self._loss)
        self._each = torch.func.vmap(step, in_dims=(0, 0, 0))  # (J, P) weights
        self._shared = torch.func.vmap(step, in_dims=(None, 0, 0))  # one (P,) copy for all

    def _loss(self, flat: torch.Tensor, inputs: Any, targets: Any) -> torch.Tensor:
        """The task's loss of one job's (P,) weights on one mini-batch."""
        views = (t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes, strict=True))
        params = dict(zip(self.names, views, strict=True))
        return self.trainer.task.loss(_Functional(self.trainer.model, params), inputs, targets)

    def compute(self, jobs: Sequence[JobArgs]) -> list[Result]:
        """The jobs' results, in order, as :meth:`LocalTrainer.update` would give them (within
        float tolerance). Jobs whose clients hold fewer than B samples draw smaller mini-batches
        and are computed in a group of their own size."""
        trainer = self.trainer
        schedules = [trainer.schedule(j.client_id, j.version) for j in jobs]
        groups: dict[int, list[int]] = {}
        for n, schedule in enumerate(schedules):
            groups.setdefault(schedule[0].size, []).append(n)
        out: list[Result | None] = [None] * len(jobs)
        for members in groups.values():
            for s in range(0, len(members), self.max_jobs):
                part = members[s : s + self.max_jobs]
                ctxs = [trainer.context(*jobs[n]) for n in part]
                results = self._group(ctxs, [schedules[n] for n in part])
                for n, result in zip(part, results, strict=True):
                    out[n] = result
        return out  # type: ignore[return-value]

    def _group(
        self, ctxs: Sequence[TaskContext], schedules: Sequence[Sequence[np.ndarray]]
    ) -> list[Result]:
        """Jobs whose mini-batches have the same size, in one vmapped step per local step."""
        trainer = self.trainer
        trainer.model.train()
        starts, slots = self._starts(ctxs)
        inputs, targets = self._inputs(schedules)
        steps, lr, last_step = len(schedules[0]), trainer.local_lr, trainer.last_step
        w = starts[0] if starts.shape[0] == 1 else starts[slots]  # (P,) shared or (J, P)
        first = first_loss = None
        for e in range(steps):
            step = self._shared if w.dim() == 1 else self._each
            grad, loss = step(w, inputs[:, e], targets[:, e])  # (J, P), (J,)
            if first is None:
                first, first_loss = grad, loss
            if last_step or e + 1 < steps:
                w = w - lr * grad  # as ClientTask.step: p.sub_(lr * g), p (P,) -> (J, P)
        assert first is not None and first_loss is not None
        # (w_v - w^E) / lr as the one-job path computes it, elementwise in the same order
        vectors = (starts[slots] - w) / lr if steps > 1 else first
        host = vectors.to("cpu", torch.float32)
        losses = first_loss.tolist()
        results = []
        for j, ctx in enumerate(ctxs):
            end = w[j] if last_step else None
            state, report = trainer.outcome(ctx, end, steps)
            # a copy: a row view would keep the whole (J, P) block alive in the server
            results.append(Result(host[j].numpy().copy(), losses[j], state, report))
        return results

    def _starts(self, ctxs: Sequence[TaskContext]) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct weights arrays as a (V, P) tensor on the device (one copy per version,
        by identity as LocalTrainer.load compares them) and each job's row in it."""
        rows: dict[int, int] = {}
        arrays = []
        for ctx in ctxs:
            if id(ctx.weights) not in rows:
                rows[id(ctx.weights)] = len(arrays)
                arrays.append(ctx.weights)
        stacked = torch.tensor(np.stack(arrays), dtype=torch.float32, device=self.trainer.device)
        slots = torch.tensor([rows[id(c.weights)] for c in ctxs], device=stacked.device)
        return stacked, slots

    def _inputs(self, schedules: Sequence[Sequence[np.ndarray]]) -> tuple[Any, Any]:
        """(inputs, targets) as (J, E, B, ...) tensors on the device."""
        trainer, jobs, steps = self.trainer, len(schedules), len(schedules[0])
        takes = [take for schedule in schedules for take in schedule]
        if type(trainer.task).batch is ClientTask.batch:
            # The default transform is elementwise: one call for all gives the same values.
            x, y = trainer.inputs(np.concatenate(takes))
            return x.view(jobs, steps, -1, *x.shape[1:]), y.view(jobs, steps, -1, *y.shape[1:])
        pairs = [trainer.inputs(take) for take in takes]
        x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        return x.view(jobs, steps, *x.shape[1:]), y.view(jobs, steps, *y.shape[1:])


def wanted(mode: str, device: torch.device) -> bool:
    """Whether ``client.batched=mode`` asks for batching on ``device``: auto only on CUDA."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def batched_jobs(trainer: LocalTrainer, mode: str, max_jobs: int) -> tuple[BatchedJobs | None, str]:
    """The worker's batched compute for ``client.batched=mode`` and a phrase saying which path
    it takes and why: (BatchedJobs, "batched") or (None, the reason for one job at a time).

    ``auto`` batches on CUDA only and falls back with an info line; ``on`` batches on any device
    and raises a ConfigError naming the field where it cannot.
    """
    if not wanted(mode, trainer.device):
        where = "" if mode == "off" else " on a CPU worker"
        return None, f"one job at a time: {BATCHED_FIELD}={mode}{where}"
    reason = unsupported(trainer.task, trainer.model)
    batched = BatchedJobs(trainer, max_jobs)
    if reason is None:
        reason = probe(trainer, batched)
    if reason is None:
        return batched, "batched"
    if mode == "on":
        raise ConfigError(f"{BATCHED_FIELD}=on, but {reason}: set {BATCHED_FIELD} to auto or off")
    log.info("%s=auto: computing one job at a time: %s", BATCHED_FIELD, reason)
    return None, f"one job at a time: {reason}"


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """cuDNN convolutions in IEEE float32 for the body: by default they round to TF32 on Ampere
    and later GPUs (10-bit mantissas), which would put the two paths about 1e-3 apart and hide
    a real difference behind rounding. No effect on CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def probe(trainer: LocalTrainer, batched: BatchedJobs) -> str | None:
    """Runs jobs of client 0 both ways, on one shared version and on two versions: None if the
    batched results agree with the one-job path's, else why not (what torch.func raised, or how
    far apart they are)."""
    from rayfl.models import get_flat

    w = get_flat(trainer.model)  # the initial weights
    other = w * np.float32(0.5)  # a second "version" (another array, so another slot)
    for jobs in ([JobArgs(0, 0, w), JobArgs(0, 1, w)], [JobArgs(0, 0, w), JobArgs(0, 1, other)]):
        with ieee_float32():
            try:
                got = batched.compute(jobs)
            except (RayflError, torch.cuda.OutOfMemoryError):
                raise  # a broken task, or too small a GPU share: not a reason to fall back
            except Exception as e:  # whatever torch.func cannot map: data-dependent code, dropout
                text = str(e).strip()
                first = text.splitlines()[0] if text else ""
                return f"torch.func could not map the task's loss ({type(e).__name__}: {first})"
            wanted = [trainer.update(*job) for job in jobs]
        for result, want in zip(got, wanted, strict=True):
            scale = float(np.max(np.abs(want.vector))) or 1.0
            diff = float(np.max(np.abs(result.vector - want.vector)))
            if diff > PROBE_RTOL * scale or not np.isclose(result.loss, want.loss, rtol=PROBE_RTOL):
                return (
                    f"its updates differ from the one-job path's by {diff / scale:.1e} (relative)"
                )
    return None

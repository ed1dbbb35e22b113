"""A client worker's share of a GPU: its memory cap and its out-of-memory error (PyTorch, no Ray).

Ray's ``num_gpus`` fraction only schedules: four workers with ``client.num_gpus: 0.25`` share a
GPU, but each could take all of its memory, and the first to grow would make another fail far
from the cause. So each GPU worker caps its own caching allocator to its fraction, and a CUDA
out-of-memory in a job becomes one line naming ``client.num_gpus`` and the batch that did not
fit. On CPU both are no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from rayfl.config import ClientConfig
from rayfl.errors import RayflError

GIB = 2**30


def cap_memory(device: torch.device, num_gpus: float) -> None:
    """Limits this process's CUDA allocations to its ``num_gpus`` share of the device (all of it
    for 1 or more: a worker sees only its own GPUs)."""
    if device.type == "cuda" and 0 < num_gpus < 1:
        torch.cuda.set_per_process_memory_fraction(num_gpus, device)


@contextlib.contextmanager
def out_of_memory_as_error(device: torch.device, cfg: ClientConfig, jobs: int) -> Iterator[None]:
    """Turns a CUDA out-of-memory in the body (``jobs`` jobs at once) into a one-line RayflError
    naming ``client.num_gpus`` and the batch; on CPU it changes nothing."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory / GIB
        raise RayflError(out_of_memory_message(cfg, jobs, total)) from None


def out_of_memory_message(cfg: ClientConfig, jobs: int, total_gib: float) -> str:
    """The one line for ``jobs`` jobs at once that ran out of a worker's share of a
    ``total_gib`` GiB GPU."""
    share = total_gib * min(1.0, cfg.num_gpus or 1.0)
    return (
        f"client.num_gpus={cfg.num_gpus}: the worker's {share:.1f} GiB of the GPU's "
        f"{total_gib:.1f} GiB ran out computing {jobs} job(s) at once (client.batch_size="
        f"{cfg.batch_size}, client.local_steps={cfg.local_steps}, client.max_batch_jobs="
        f"{cfg.max_batch_jobs}): raise client.num_gpus (fewer workers per GPU) or lower "
        "client.max_batch_jobs or client.batch_size"
    )

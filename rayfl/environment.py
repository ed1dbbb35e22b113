"""What decides a run's float results besides its config and seed, for ``summary.json``.

The virtual clock makes a run's numbers independent of the cluster's size and timing: the same
config and seed give the same bytes with 1 worker or 64, on one node or many. They are the same
*floats* only where the float kernels are the same: the same torch, numpy and BLAS builds, the
same CPU instruction set (torch's AVX2 / AVX-512 kernels, oneDNN's and OpenBLAS's dispatch), the
same thread counts. Another CPU model gives results that differ in the last bits, and WKAFL's
similarity selection and judgement's accept/reject can amplify such a difference over a long run
(docs/design.md, "Reproducibility"). This records the driver node's side of that, so two runs'
summaries say whether their bytes should agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

KERNEL_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "OPENBLAS_CORETYPE",
    "NPY_DISABLE_CPU_FEATURES",
    "CUBLAS_WORKSPACE_CONFIG",
)


def fingerprint() -> dict[str, Any]:
    """Library versions, CPU model and flags (hashed), thread counts and kernel env variables."""
    import numpy as np
    import torch

    model, flags = cpu()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas_id = f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - numpy's config layout is not API
        blas_id = "unknown"
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "numpy": np.__version__,
        "numpy_blas": blas_id,
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def cpu() -> tuple[str, str]:
    """(CPU model name, its feature flags sorted and space-joined), from /proc/cpuinfo."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        model = platform.processor()
    return model, flags


def by_worker(infos: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct worker fingerprints of a pool (``ClientWorker.info()`` dicts), each with the
    indices of the workers that have it: one entry for a uniform pool, more when nodes differ."""
    groups: dict[str, dict[str, Any]] = {}
    for info in infos:
        env = info.get("environment")
        if env is None:
            continue
        key = json.dumps(env, sort_keys=True)
        groups.setdefault(key, {"workers": [], **env})["workers"].append(info.get("index"))
    return list(groups.values())

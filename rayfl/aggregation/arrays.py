"""The array operations of the shipped rules and optimizers, on numpy arrays or torch tensors.

A rule chain runs on one backend (``aggregation.backend``, :mod:`rayfl.aggregation.backend`): its
big arrays (the (K, P) updates, the (P,) estimate, direction and model, the rules' and the
optimizer's (P,) states) are numpy arrays on the host, or torch tensors on the server's device
(its GPU). Small per-update vectors (weights, staleness, losses, norms, cosines: (K,) float64)
are numpy on the host on both backends, so the rules' discrete decisions (who is selected, which
row is clipped) are made by the same numpy code either way.

Each op's numpy branch is exactly the code the rules always ran (the golden bytes); its torch
branch computes the same quantity on the tensor's device (float32 sums in another order: equal
within float tolerance, not bit for bit). A user's rule may call these to run on both backends.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

Array = Any  # np.ndarray, or torch.Tensor on the torch backend


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch where no one has)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch() -> Any:
    return sys.modules["torch"]  # imported: a tensor exists


def xp(x: Array) -> Any:
    """The module with ``x``'s elementwise functions (``sqrt``, ``sign``, ``exp``,
    ``zeros_like``, ``full_like``): numpy, or torch for a tensor."""
    return _torch() if is_tensor(x) else np


def float32(x: Array) -> Array:
    """``x`` as float32 in its own backend; no copy where it already is."""
    if is_tensor(x):
        return x.to(dtype=_torch().float32)
    return np.asarray(x, dtype=np.float32)


def to_host(x: Array) -> np.ndarray:
    """``x`` as a numpy array on the host (a tensor is copied off its device)."""
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return x


def copy(x: Array) -> Array:
    """A copy of ``x`` in its own backend (and device)."""
    return x.clone() if is_tensor(x) else x.copy()


def like(values: np.ndarray, x: Array) -> Array:
    """Host ``values`` in ``x``'s backend (on its device for a tensor)."""
    if is_tensor(x):
        return _torch().as_tensor(values, device=x.device)
    return values


def row_sq_norms(x: Array) -> np.ndarray:
    """||x_i||^2 of each row of a (K, P) float32 array, as (K,) float64 on the host (summed in
    float32: one BLAS-speed pass)."""
    if is_tensor(x):
        return _torch().einsum("ij,ij->i", x, x).double().cpu().numpy()
    return np.einsum("ij,ij->i", x, x).astype(np.float64)


def row_dots(x: Array, v: Array) -> np.ndarray:
    """x_i . v for each row of a (K, P) array and a (P,) vector, as (K,) float64 on the host."""
    if is_tensor(x):
        return (x @ v).double().cpu().numpy()
    return (x @ v).astype(np.float64)


def sq_norm(v: Array) -> float:
    """||v||^2 of a (P,) vector as a Python float."""
    if is_tensor(v):
        return float(_torch().dot(v, v))
    return float(np.dot(v, v))


def weighted_sum(weights: np.ndarray, x: Array) -> Array:
    """sum_i weights_i * x_i as (P,) float32 in ``x``'s backend (one gemv; ``x`` not copied)."""
    w32 = np.asarray(weights, dtype=np.float32)
    if is_tensor(x):
        return _torch().as_tensor(w32, device=x.device) @ float32(x)
    return w32 @ np.asarray(x, dtype=np.float32)


def scale_rows(x: Array, scale: np.ndarray, in_place: bool) -> Array:
    """Row i of a (K, P) float32 array times ``scale[i]`` (host (K,), cast to float32); into
    ``x`` itself when ``in_place``."""
    s = scale.astype(np.float32)[:, None]
    if is_tensor(x):
        s = _torch().as_tensor(s, device=x.device)
        return x.mul_(s) if in_place else x * s
    if in_place:
        x *= s
        return x
    return x * s


def add(x: Array, y: Array, in_place: bool) -> Array:
    """x + y (broadcast); into ``x`` itself when ``in_place``."""
    if is_tensor(x):
        return x.add_(y) if in_place else x + y
    return np.add(x, y, out=x if in_place else None)


def zeros(like_params: Array) -> Array:
    """float32 zeros shaped like ``like_params``, in its backend."""
    if is_tensor(like_params):
        return _torch().zeros_like(like_params, dtype=_torch().float32)
    return np.zeros(np.shape(like_params), dtype=np.float32)

"""Model factories and the flat-vector view of a model's parameters.

``paper_cnn`` is the network of the AKAFL-RJ paper (spec section 7): Conv(1->32, 5x5) ReLU
MaxPool2, Conv(32->64, 5x5) ReLU MaxPool2, FC(1024->512) ReLU, FC(512->10). The server and the
workers exchange models and updates as flat float32 vectors of all parameters, in
``model.parameters()`` order; buffers (e.g. BatchNorm statistics) are not aggregated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rayfl import seeding
from rayfl.config import ModelConfig
from rayfl.errors import ConfigError
from rayfl.registry import check_params, resolve

ModelFactory = Callable[..., nn.Module]


def paper_cnn(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The AKAFL-RJ / WKAFL CNN; 582,026 parameters on 28x28 MNIST."""
    c, h, w = input_shape
    side_h, side_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(c, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side_h * side_w, 512),  # 1024 -> 512 on 28x28
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200,)) -> nn.Module:
    """A fully connected ReLU network on the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(np.prod(input_shape))
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


MODELS: dict[str, ModelFactory] = {"paper_cnn": paper_cnn, "mlp": mlp}


def resolve_factory(name: str) -> tuple[ModelFactory, dict[str, Any]]:
    """The factory for ``model.name``: a shipped name or an import path 'pkg.module:function'."""
    return resolve("model.name", name, MODELS, "model"), {}


def build_model(
    cfg: ModelConfig, input_shape: Sequence[int], num_classes: int, seed: int
) -> nn.Module:
    """Builds the model with initial weights drawn from the run's seed (global RNG untouched)."""
    factory, _ = resolve_factory(cfg.name)
    kwargs: dict[str, Any] = check_params("model.kwargs", factory, cfg.kwargs, engine_args=2)
    if cfg.name == "mlp":
        kwargs.setdefault("hidden", tuple(cfg.hidden))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeding.derive(seed, seeding.MODEL_INIT))
        try:
            model = factory(tuple(input_shape), num_classes, **kwargs)
        except TypeError as e:
            raise ConfigError(
                f"model.name={cfg.name!r}: the factory rejected its arguments ({e}); it must "
                "accept (input_shape, num_classes, **model.kwargs)"
            ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.name={cfg.name!r} returned {type(model).__name__}, not an nn.Module"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"model.name={cfg.name!r} has no trainable parameters")
    return model


def num_parameters(model: nn.Module) -> int:
    """P, the length of the flat parameter vector."""
    return sum(p.numel() for p in model.parameters())


def get_flat(model: nn.Module) -> np.ndarray:
    """The parameters as one (P,) float32 numpy vector (a copy)."""
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector(model.parameters())
    return flat.detach().to("cpu", torch.float32).numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Copies a (P,) float32 vector into the model's parameters in place.

    A copy, never a view: ``torch.nn.utils.vector_to_parameters`` would make the parameters alias
    ``flat`` (for a read-only array from the object store, local SGD steps would write into it).
    """
    with warnings.catch_warnings():  # arrays from the Ray object store are read-only; we only read
        warnings.simplefilter("ignore", UserWarning)
        vec = torch.from_numpy(np.asarray(flat, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(vec[offset : offset + n].view_as(p))
            offset += n
    if offset != vec.numel():
        raise ValueError(f"flat vector has {vec.numel()} values, the model {offset} parameters")

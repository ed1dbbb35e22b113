"""Local training and evaluation: plain PyTorch, no Ray (spec section 1).

A client update is a pure function of ``(client, version, seed)``: the mini-batches are drawn from
``seeding.rng(seed, BATCH, client, version)``, so the same job gives the same bytes on any worker.
With ``local_steps = 1`` the update is the mini-batch gradient g_i = grad F_i(w_v; xi_i),
|xi_i| = B; with ``local_steps = E > 1`` it is the pseudo-gradient (w_v - w_v^E) / local_lr of E
local SGD steps. The reported loss is the loss of the first mini-batch at w_v (the loss of the
model the client received), which is what the server's L_t averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayfl import seeding
from rayfl.models import set_flat


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


class UpdateComputer:
    """Computes client updates for one worker: holds the model and views of the shared data.

    ``x``, ``y``, ``indices`` and ``offsets`` are the read-only arrays every worker on a node maps
    from the Ray object store (zero copy); only the sampled mini-batch is copied.
    """

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray,  # (n_train, C, H, W) uint8
        y: np.ndarray,  # (n_train,) int64
        indices: np.ndarray,  # partition CSR: concatenated sample indices
        offsets: np.ndarray,  # (N + 1,) int64
        mean: Sequence[float],
        std: Sequence[float],
        *,
        batch_size: int,
        local_steps: int,
        local_lr: float,
        seed: int,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters()]
        self.x, self.y = x, y
        self.indices, self.offsets = indices, offsets
        self.normalize = Normalizer(mean, std, self.device)
        self.batch_size = batch_size
        self.local_steps = local_steps
        self.local_lr = local_lr
        self.seed = seed
        # The weights array the model holds now. Compared by identity (and kept referenced so
        # its id cannot be reused): the version number alone is not enough, since with
        # ``staleness: nominal`` a job's version differs from the weights it computes on.
        self._loaded: np.ndarray | None = None

    def _batch(
        self, own: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = own.shape[0]
        take = own[rng.choice(n, size=min(self.batch_size, n), replace=False)]
        take.sort()  # ascending reads are kinder to the page cache; order does not change a mean
        xb = self.normalize(self.x[take])
        yb = torch.from_numpy(self.y[take]).to(self.device)
        return xb, yb

    def _grad(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, float]:
        loss = F.cross_entropy(self.model(xb), yb)
        grads = torch.autograd.grad(loss, self.params)
        return torch.cat([g.reshape(-1) for g in grads]), float(loss.detach())

    def compute(
        self, client_id: int, version: int, weights: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """The update of ``client_id`` for its job on ``version``, computed on ``weights``
        (w_version, or the newest model with ``staleness: nominal``); the mini-batches depend on
        (seed, client_id, version) only.

        Returns:
            ((P,) float32 update, first mini-batch loss).
        """
        if self._loaded is not weights or self.local_steps > 1:
            set_flat(self.model, weights)
            self._loaded = weights
        own = self.indices[self.offsets[client_id] : self.offsets[client_id + 1]]
        rng = seeding.rng(self.seed, seeding.BATCH, client_id, version)
        self.model.train()
        if self.local_steps == 1:
            g, loss = self._grad(*self._batch(own, rng))
            return g.to("cpu", torch.float32).numpy(), loss
        # E local SGD steps, then the pseudo-gradient (w_v - w^E) / local_lr.
        start = torch.cat([p.detach().reshape(-1) for p in self.params]).clone()
        first_loss = 0.0
        for e in range(self.local_steps):
            g, loss = self._grad(*self._batch(own, rng))
            if e == 0:
                first_loss = loss
            with torch.no_grad():
                offset = 0
                for p in self.params:
                    n = p.numel()
                    p.sub_(self.local_lr * g[offset : offset + n].view_as(p))
                    offset += n
        end = torch.cat([p.detach().reshape(-1) for p in self.params])
        self._loaded = None  # the model now holds w^E, not w_v
        return ((start - end) / self.local_lr).to("cpu", torch.float32).numpy(), first_loss


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    normalize: Normalizer,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of ``model`` on uint8 images ``x`` and labels ``y``."""
    model.eval()
    correct, total_loss = 0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = normalize(np.array(x[start : start + batch_size]))  # copy: store views are read-only
        yb = torch.from_numpy(np.array(y[start : start + batch_size], dtype=np.int64)).to(xb.device)
        logits = model(xb)
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    n = max(1, x.shape[0])
    return correct / n, total_loss / n

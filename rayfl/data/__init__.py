"""Data sets (bundled MNIST, torchvision sets) and client partitions; numpy only, no ray or torch.

See ``datasets.py`` for the loaders and ``partition.py`` for the partitioners (iid, Dirichlet
label skew, McMahan et al. 2017 shards, and the AKAFL-RJ paper's split, spec section 7).
"""

from rayfl.data.datasets import DATASETS, Dataset, load_bundled_mnist, load_dataset
from rayfl.data.partition import (
    PARTITIONERS,
    Partition,
    dirichlet,
    iid,
    paper,
    partition,
    shards,
)

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "Dataset",
    "Partition",
    "dirichlet",
    "iid",
    "load_bundled_mnist",
    "load_dataset",
    "paper",
    "partition",
    "shards",
]

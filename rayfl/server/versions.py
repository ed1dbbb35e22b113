"""Global model versions in the Ray object store, reference-counted by the live jobs.

After iteration t the server puts w_{t+1} once (``ray.put``) and sends its ObjectRef with every
job on it. A version is freed (its ObjectRef dropped, so the store frees it) as soon as no live
job holds it and it is not the newest, so the store holds at most one copy per distinct in-flight
version (``agg/versions_held``).

A version may come with the rules' broadcast (``Rule.broadcast``: SCAFFOLD's control variate):
small named arrays that every job on the version receives beside w_v, put once like it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import ray


class VersionStore:
    """version -> [ObjectRef of w_v, number of live jobs on it, broadcast, its ObjectRef]."""

    def __init__(self) -> None:
        self._entries: dict[int, list[Any]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, version: int) -> bool:
        return version in self._entries

    def put(
        self, version: int, w: np.ndarray, broadcast: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Puts w_v (and the rules' broadcast with it, if any) in the object store, held by no
        job yet."""
        server = dict(broadcast) if broadcast else None
        self._entries[version] = [
            ray.put(w),
            0,
            server,
            None if server is None else ray.put(server),
        ]

    def ref(self, version: int) -> Any:
        """The ObjectRef of w_v."""
        return self._entries[version][0]

    def broadcast_ref(self, version: int) -> Any:
        """The ObjectRef of the broadcast that goes with w_v; None if the rules make none."""
        return self._entries[version][3]

    def broadcasts(self, versions: list[int]) -> dict[int, dict[str, np.ndarray]]:
        """The broadcasts of those of ``versions`` that have one (for a checkpoint)."""
        got = ((v, self._entries[v][2]) for v in versions)
        return {v: b for v, b in got if b is not None}

    def acquire(self, version: int, jobs: int = 1) -> None:
        """``jobs`` jobs on ``version`` start (all N clients at once at the start)."""
        self._entries[version][1] += jobs

    def release(self, version: int, newest: int) -> None:
        """A job on ``version`` ended; frees the version if it was the last and not ``newest``."""
        entry = self._entries[version]
        entry[1] -= 1
        if entry[1] == 0 and version != newest:
            del self._entries[version]

    def free_if_unused(self, version: int) -> None:
        """Frees ``version`` if it is held and no live job is on it (a superseded newest)."""
        entry = self._entries.get(version)
        if entry is not None and entry[1] == 0:
            del self._entries[version]

    def refs(self, versions: list[int]) -> dict[int, Any]:
        """The ObjectRefs of ``versions`` (a checkpoint reads the arrays from the store)."""
        return {v: self._entries[v][0] for v in versions}

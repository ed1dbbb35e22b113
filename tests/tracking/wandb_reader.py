"""Reads a W&B offline run file (``run-<id>.wandb``) back, for the tests.

wandb >= 0.19 writes it from its Go core and ships no Python reader, so this is the format as the
core writes it: a 7-byte header (``:W&B``, magic 0xBEE1, version), then LevelDB-log records in
32 KiB blocks (each: CRC32, length, type FULL/FIRST/MIDDLE/LAST) holding W&B's own protobuf
``Record`` messages (``wandb.proto.wandb_internal_pb2``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[Any]:
    """Every protobuf Record of the file, in order."""
    data = Path(path).read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, (ident, magic)
    pos, parts = 7, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding up to the block's end
            pos += left
            continue
        parts.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def history(path: Path) -> list[dict[str, Any]]:
    """The logged rows (``run.log``), each a dict with ``_step``."""
    out = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            out.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
    return out


def config(path: Path) -> dict[str, Any]:
    """The run's config (``wandb.init(config=...)``): the run record's, then later updates."""
    out: dict[str, Any] = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        items = (
            r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        )
        for item in items:
            value = json.loads(item.value_json)
            out[item.key or "/".join(item.nested_key)] = (
                value.get("value", value) if isinstance(value, dict) else value
            )
    return out

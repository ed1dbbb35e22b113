"""Run folders on shared or cloud storage: any URI pyarrow's filesystems understand.

On a cluster every node must be able to write results and checkpoints; a local folder works on one
machine, a URI (``s3://bucket/runs/x``, ``gs://...``, ``file:///shared/runs/x``) works anywhere.
The driver writes into a local staging folder and ``Mirror.push`` copies it to the URI (after
each checkpoint, every few seconds of evaluations, and at the end), so the URI always holds whole
files. ``Mirror.pull`` brings a run back for ``--resume``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from rayfl.errors import RayflError


def is_uri(path: str | os.PathLike | None) -> bool:
    """True for ``scheme://...`` (a pyarrow filesystem URI), False for a plain path."""
    return path is not None and "://" in str(path)


def push_dir(local: str | os.PathLike, uri: str) -> None:
    """Copies a local folder to a storage URI (e.g. the figures drawn after a run)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri.rstrip("/"))
    pafs.copy_files(
        str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


class Mirror:
    """A local staging folder kept in step with a storage URI."""

    def __init__(self, uri: str, min_interval_s: float = 30.0):
        import pyarrow.fs as pafs

        self.uri = uri.rstrip("/")
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        except Exception as e:  # unknown scheme, missing credentials or library: all user errors
            raise RayflError(
                f"storage {uri} is not usable ({e.__class__.__name__}: {str(e).splitlines()[0]}): "
                "use a local folder or a URI pyarrow supports (s3://, gs://, hdfs://, file://)"
            ) from None
        self.local = Path(tempfile.mkdtemp(prefix="rayfl-stage-"))
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def check_writable(self) -> None:
        """Creates the target folder; a one-line RayflError if the storage refuses."""
        try:
            self.fs.create_dir(self.root, recursive=True)
        except Exception as e:
            raise RayflError(
                f"cannot write to {self.uri} ({e.__class__.__name__}): check the URI and the "
                "credentials, or use a local --output"
            ) from None

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(f"{self.root}/{name}").type != pafs.FileType.NotFound

    def push(self, force: bool = True) -> None:
        """Copies the staging folder to the URI (at most every ``min_interval_s`` unless forced)."""
        import pyarrow.fs as pafs

        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        pafs.copy_files(
            str(self.local),
            self.root,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )
        self._last = now

    def pull(self) -> Path:
        """Copies the URI's run folder into the staging folder (for --resume); returns it."""
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise RayflError(f"--resume {self.uri}: no such folder; pass a run's folder or URI")
        pafs.copy_files(
            self.root,
            str(self.local),
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return self.local

"""Files a trainer writes whole or not at all, so a crash or Ctrl-C mid-write never leaves half a checkpoint."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write that appears at `path` once complete: written beside it, synced to disk, then renamed."""
    # A dot name and a `.part` suffix: a leftover of a killed write is never taken for a checkpoint.
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o644)  # mkstemp's file is private; a checkpoint should read like any other file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise

"""Counts of the real-size models kept on disk between processes: counting one takes seconds, reading it none.

    counts = CountFile(data_dir / "estimate-counts.json", fingerprint(SOURCES))
    counts.get("editor.transformer:width=1024,...") or counts.put(key, {"flops": ..., "activation_bytes": ...})

A count stays valid while the code that counts it and the libraries that build the models stay as they were: the
fingerprint hashes both, and a file written under another fingerprint is ignored (and rewritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

LIBRARIES = ("torch", "diffusers", "transformers", "peft")


class Measure(NamedTuple):
    """What one call of a model did: its FLOPs, the peak bytes of the tensors it made, alive at once, and the FLOPs
    of its attention (part of `flops`)."""

    flops: int
    activation_bytes: int
    attention_flops: int = 0


def fingerprint(sources: tuple[Path, ...]) -> str:
    """What counts depend on besides their key: the counting code's source and the libraries' versions."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    for library in LIBRARIES:
        digest.update(f"{library}={metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


class CountFile:
    """Counts by key in one JSON file, ignored when written under another fingerprint.

    A count is a small dict of integers (FLOPs, bytes, parameters). Writes replace the file whole, so a reader never
    sees half of one; of two processes writing at once, the later wins and the other's new counts are counted again.
    """

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self._counts: dict[str, dict[str, int]] | None = None

    def get(self, key: str) -> dict[str, int] | None:
        """The count kept under `key`, if any."""
        return self._load().get(key)

    def put(self, key: str, count: dict[str, int]) -> None:
        """Keep `count` under `key`, on disk at once."""
        counts = self._load()
        counts[key] = count
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"fingerprint": self.fingerprint, "counts": counts}, indent=1, sort_keys=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, self.path)

    def _load(self) -> dict[str, dict[str, int]]:
        if self._counts is None:
            self._counts = {}
            try:
                kept = json.loads(self.path.read_text())
            except (OSError, ValueError):
                kept = {}
            if isinstance(kept, dict) and kept.get("fingerprint") == self.fingerprint:
                self._counts = dict(kept.get("counts", {}))
        return self._counts

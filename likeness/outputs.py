"""The output folder a person reads: dataset/, lora/, renders/ and likeness.json.

One folder holds one character made from one reference photo with one dataset and training
configuration. Running again with the same inputs is the cached path; new render settings add
renders beside the old ones (their file names hash what made them); anything else is refused,
so one run's files are never silently written over another's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from likeness.artifacts import get_bytes
from likeness.config import RunConfig
from likeness.records import CharacterResult
from likeness.store import ArtifactStore

MANIFEST = "likeness.json"


class OutputConflict(RuntimeError):
    """The output folder holds something this run must not overwrite."""


def run_identity(trigger: str, reference_sha256: str, profile: str, config: RunConfig) -> dict[str, Any]:
    """What must match for a run to share an output folder: all but the render settings."""
    return {
        "trigger": trigger,
        "reference_sha256": reference_sha256,
        "profile": profile,
        "dataset": config.dataset.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
    }


def check_output_folder(out: Path, identity: dict[str, Any]) -> None:
    """Refuse, before any work, an output folder that belongs to another run or to someone else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputConflict(f"--out {out} exists and is not a folder")
    manifest = out / MANIFEST
    if not manifest.exists():
        if any(out.iterdir()):
            raise OutputConflict(
                f"--out {out} is not empty and holds no {MANIFEST}: it is not a Likeness output folder"
            )
        return
    recorded = json.loads(manifest.read_text())["identity"]
    differences = sorted(key for key in identity.keys() | recorded.keys() if identity.get(key) != recorded.get(key))
    if differences:
        raise OutputConflict(
            f"--out {out} holds the outputs of {recorded.get('trigger')!r} made with different "
            f"{', '.join(differences)}; choose another --out to keep both"
        )


def _write(path: Path, data: bytes, replace: bool = False) -> None:
    """Write atomically; an identical file is left alone and, unless `replace`, a different one is kept."""
    if path.exists() and not replace:
        if path.read_bytes() == data:
            return
        raise OutputConflict(f"{path} already exists with other content; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def export_outputs(
    result: CharacterResult, out: Path, identity: dict[str, Any], store: ArtifactStore, run_stats: dict[str, Any]
) -> dict[str, Any]:
    """Copy the run's artifacts from the store into `out` and record what is there."""
    dataset, lora = result.dataset, result.lora
    for item in dataset.items:
        filename = item.filename(dataset.trigger)
        _write(out / "dataset" / filename, get_bytes(item.image, store))
        _write(out / "dataset" / filename.replace(".png", ".txt"), (item.caption + "\n").encode())
    _write(out / "dataset" / "manifest.jsonl", get_bytes(dataset.manifest, store))
    _write(out / "dataset" / "contact_sheet.png", get_bytes(dataset.contact_sheet, store))
    for checkpoint in lora.checkpoints:
        _write(out / "lora" / checkpoint.weights.filename, get_bytes(checkpoint.weights, store))

    manifest_path = out / MANIFEST
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    renders = {entry["file"]: entry for entry in previous.get("renders", [])}
    for item in result.renders:
        file = f"renders/{dataset.trigger}_{item.output.filename}"
        _write(out / file, get_bytes(item.output, store))
        renders[file] = {
            "file": file,
            **item.model_dump(mode="json", exclude={"output", "lora"}),
            "lora_sha256": item.lora.sha256,
            "sha256": item.output.sha256,
        }
    manifest = {
        "identity": identity,
        "dataset": sorted(p.name for p in (out / "dataset").iterdir()),
        "lora": [
            {"file": f"lora/{c.weights.filename}", "step": c.step, "loss": c.loss, "sha256": c.weights.sha256}
            for c in lora.checkpoints
        ],
        "renders": sorted(renders.values(), key=lambda entry: entry["file"]),
        "last_run": run_stats,
    }
    _write(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode(), replace=True)
    return manifest

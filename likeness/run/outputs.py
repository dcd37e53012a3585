"""The output folder a person reads: dataset/ (images and captions, what a trainer reads), masks/, the
dataset's manifest and contact sheet, the reference photo, lora/, renders/ and likeness.json.

One folder holds one character made from one reference photo with one profile and one dataset
and training configuration. Running again with the same inputs is the cached path; new render
settings add renders beside the old ones (their file names hash what made them); anything else
is refused, so one run's files are never silently written over another's.

`likeness.json` is written first when an export starts (marked incomplete) and last when it
ends, so a folder whose export was cut off (a full disk, Ctrl-C, a kill) is still recognised as
Likeness's own and the next run completes it. It also records the sha256 of every file, so a
re-run with nothing changed is answered "up to date" without starting Prefect.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from likeness import __version__
from likeness.config import ModelProfile, RunConfig
from likeness.records import CharacterResult, LoraRef, RenderItem, Renders, Strengths
from likeness.storage.artifacts import ArtifactRef, get_bytes
from likeness.storage.store import ArtifactStore
from likeness.training.data import training_files

MANIFEST = "likeness.json"
DATASET_MANIFEST = "dataset_manifest.jsonl"
DATASET_CONTACT_SHEET = "dataset_contact_sheet.png"
LORA_SCORES_PLOT = "lora/identity_by_step.png"
REFERENCE = "reference.png"
RECORD_FORMAT = 4
TEMP_SUFFIX = ".likeness-part"


class OutputConflict(RuntimeError):
    """The output folder holds something this run must not overwrite."""


def run_identity(
    trigger: str,
    reference_sha256: str,
    profile: ModelProfile,
    config: RunConfig,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What must match for a run to share an output folder: all but the render settings. `inputs` holds
    the digests of what else shapes the dataset: garment and pose images, a catalogue file."""
    return {
        "format": RECORD_FORMAT,
        "trigger": trigger,
        "reference_sha256": reference_sha256,
        "inputs": inputs or {},
        "profile": {"name": profile.name, **profile.output_identity()},
        "dataset": config.dataset.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
    }


def run_key(identity: dict[str, Any], config: RunConfig, command: str = "produce") -> str:
    """A digest of everything that decides a run's outputs, render settings, the command (`dataset` makes only
    the dataset) and Likeness' version included."""
    payload = {
        "identity": identity,
        "render": config.render.model_dump(mode="json"),
        "command": command,
        "likeness": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def read_record(out: Path) -> dict[str, Any] | None:
    """The folder's `likeness.json`, or None if it has none; OutputConflict if it is not one Likeness wrote."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return None
    problem = f"--out {out} holds a {MANIFEST} that Likeness cannot trust"
    try:
        record = json.loads(manifest.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputConflict(f"{problem} ({exc}); move it away or choose another --out") from None
    if not isinstance(record, dict) or not isinstance(record.get("identity"), dict):
        raise OutputConflict(f"{problem} (it has no identity record); move it away or choose another --out")
    recorded_format = record["identity"].get("format")
    if recorded_format != RECORD_FORMAT:
        raise OutputConflict(
            f"{problem}: it was written by another version of Likeness (record format {recorded_format!r}, "
            f"this one writes {RECORD_FORMAT}); choose another --out"
        )
    return record


def check_output_folder(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Refuse, before any work, an output folder that belongs to another run or to someone else.

    Returns the folder's record when it is this run's folder, None when the folder is new.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise OutputConflict(f"--out {out} exists and is not a folder")
    record = read_record(out)
    if record is None:
        if any(not _is_temp(path) for path in out.iterdir()):
            raise OutputConflict(
                f"--out {out} is not empty and holds no {MANIFEST}: it is not a Likeness output folder"
            )
        return None
    recorded = record["identity"]
    differences = sorted(key for key in identity.keys() | recorded.keys() if identity.get(key) != recorded.get(key))
    if differences:
        raise OutputConflict(
            f"--out {out} holds the outputs of {recorded.get('trigger')!r} made with different "
            f"{', '.join(differences)}; choose another --out to keep both"
        )
    return record


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def is_up_to_date(out: Path, record: dict[str, Any] | None, key: str) -> bool:
    """True when the last export of this folder finished for these very inputs and every file is as it wrote it."""
    if not record or not record.get("complete") or record.get("run_key") != key:
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, sha256 in files.items():
        path = out / name
        if not path.is_file() or file_sha256(path) != sha256:
            return False
    return True


def _write(path: Path, data: bytes, replace: bool = False) -> None:
    """Write atomically; an identical file is left alone and, unless `replace`, a different one is kept."""
    if path.exists() and not replace:
        if path.read_bytes() == data:
            return
        raise OutputConflict(f"{path} already exists with other content; not overwriting it")
    name = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: its files are private (0600); a person's outputs get the umask's permissions.
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
        os.replace(name, path)
    except BaseException as exc:
        name.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            # A failed write names no file; the person needs to know which one.
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def remove_leftovers(out: Path) -> list[Path]:
    """Delete the temporary files an export that was killed left in `out`; returns what was removed."""
    leftovers = [path for path in out.rglob(f".*{TEMP_SUFFIX}") if path.is_file()] if out.is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def _write_record(out: Path, record: dict[str, Any]) -> None:
    _write(out / MANIFEST, (json.dumps(record, indent=2) + "\n").encode(), replace=True)


def best_lora_names(lora: LoraRef) -> list[str]:
    """`NAME.safetensors`, or for Wan 2.2 A14B `NAME_high_noise.safetensors` and `NAME_low_noise.safetensors`."""
    if lora.best.low_noise is None:
        return [f"{lora.trigger}.safetensors"]
    return [f"{lora.trigger}_high_noise.safetensors", f"{lora.trigger}_low_noise.safetensors"]


def _in_lora(folder: str, ref: ArtifactRef) -> str:
    """Where a checkpoint file or a sample lies in the output folder."""
    return f"lora/{folder}/{ref.filename}"


def lora_entries(lora: LoraRef) -> list[dict[str, Any]]:
    """The record's lines for a LoRA: each checkpoint with its files and score, the best marked, and why training
    stopped at the last one where it stopped early."""
    stop = lora.stopped_early
    entries = []
    for c in lora.checkpoints:
        best = c.step == lora.best.step
        entries.append(
            {
                "files": [_in_lora("checkpoints", ref) for ref in c.files],
                "step": c.step,
                "loss": c.loss,
                "identity_distance": c.identity_distance,
                "faces_found": c.faces_found,
                "samples": [_in_lora("samples", ref) for ref in c.samples],
                "sha256": [ref.sha256 for ref in c.files],
                **({"best": True, "published_as": [f"lora/{name}" for name in best_lora_names(lora)]} if best else {}),
                **({"stopped_early": stop.reason} if stop and stop.step == c.step else {}),
                **({"strengths": strengths_entry(lora.strengths, lora.trigger)} if best and lora.strengths else {}),
            }
        )
    return entries


def strengths_entry(strengths: Strengths, trigger: str) -> dict[str, Any]:
    """The best checkpoint's strength probe in the record: the pair chosen (what `likeness render --from` renders at
    unless `--set` names a strength), its grid (named by content: a probe at other render settings lies beside it)
    and each still's strengths, seed and distance."""
    return {
        **strengths.model_dump(mode="json", exclude={"stills", "grid"}),
        "grid": f"lora/{trigger}_strengths_{strengths.grid.sha256[:10]}.png",
        "stills": [still.model_dump(mode="json", exclude={"image"}) for still in strengths.stills],
    }


def export_outputs(
    result: CharacterResult,
    out: Path,
    identity: dict[str, Any],
    key: str,
    store: ArtifactStore,
    run_stats: dict[str, Any],
) -> dict[str, Any]:
    """Copy the run's artifacts from the store into `out` and record what is there."""
    dataset, lora = result.dataset, result.lora
    previous, files = _claim(out, identity)
    # Files a person deleted since are forgotten, so they no longer count against "up to date".
    renders = {entry["file"]: entry for entry in previous.get("renders", []) if (out / entry["file"]).is_file()}
    export = _exporter(out, files, store)
    # A trainer reads every image in dataset/ (AI Toolkit walks its subfolders too): masks, the manifest and
    # the contact sheet go beside it.
    for path, source in training_files(dataset.training_set()):
        export(path, source)
    export(DATASET_MANIFEST, dataset.manifest)
    export(DATASET_CONTACT_SHEET, dataset.contact_sheet)
    # What `likeness train --from` scores checkpoints against.
    export(REFERENCE, dataset.reference)
    if lora:
        _export_lora(lora, export)
    _export_renders(result.renders, result.render_sheet, dataset.trigger, export, renders)
    record = {
        "identity": identity,
        "complete": True,
        "run_key": key,
        # No dataset/ at all when curation kept no image.
        "dataset": sorted(p.name for p in (out / "dataset").glob("*") if not _is_temp(p)),
        # A dataset-only run leaves the LoRA a produce run exported before it in place, and in the record.
        "lora": lora_entries(lora)
        if lora
        else [entry for entry in previous.get("lora", []) if all((out / f).is_file() for f in entry["files"])],
        "renders": sorted(renders.values(), key=lambda entry: entry["file"]),
        "files": dict(sorted(files.items())),
        "last_run": run_stats,
    }
    if result.estimate:
        # What the run was expected to cost, beside what it took (`last_run.seconds`).
        record["estimate"] = [cost.model_dump() for cost in result.estimate]
    _write_record(out, record)
    return record


def export_lora_outputs(
    lora: LoraRef,
    out: Path,
    identity: dict[str, Any],
    key: str,
    store: ArtifactStore,
    run_stats: dict[str, Any],
    reference: ArtifactRef | None = None,
) -> dict[str, Any]:
    """Copy a `likeness train` run's LoRA (and the reference it was scored against) into `out` and record it."""
    _, files = _claim(out, identity)
    export = _exporter(out, files, store)
    _export_lora(lora, export)
    if reference is not None:
        # What `likeness render --from` scores renders against.
        export(REFERENCE, reference)
    record = {
        "identity": identity,
        "complete": True,
        "run_key": key,
        "dataset": [],
        "lora": lora_entries(lora),
        "renders": [],
        "files": dict(sorted(files.items())),
        "last_run": run_stats,
    }
    _write_record(out, record)
    return record


def export_render_outputs(renders: Renders, trigger: str, out: Path, store: ArtifactStore) -> dict[str, Any]:
    """Add a `likeness render` run's renders to the output folder they were made from, beside the earlier ones."""
    record = read_record(out)
    if record is None or not record.get("complete"):
        raise OutputConflict(f"{out} holds no complete {MANIFEST}: render into the folder of a finished run")
    remove_leftovers(out)
    files = {name: sha256 for name, sha256 in record.get("files", {}).items() if (out / name).is_file()}
    entries = {entry["file"]: entry for entry in record.get("renders", []) if (out / entry["file"]).is_file()}
    _export_renders(renders.items, renders.contact_sheet, trigger, _exporter(out, files, store), entries)
    record = {
        **record,
        "renders": sorted(entries.values(), key=lambda entry: entry["file"]),
        "files": dict(sorted(files.items())),
    }
    _write_record(out, record)
    return record


def _export_renders(
    items: Sequence[RenderItem],
    sheet: ArtifactRef | None,
    trigger: str,
    export: Callable[[str, ArtifactRef | str], None],
    entries: dict[str, dict[str, Any]],
) -> None:
    """Write the renders (and the upscaled videos) under `renders/`, and note each one's lineage in `entries`."""
    for item in items:
        file = f"renders/{trigger}_{item.output.filename}"
        export(file, item.output)
        upscaled = None
        if item.upscaled:
            upscaled = f"renders/{trigger}_{item.upscaled.filename}"
            export(upscaled, item.upscaled)
        entries[file] = {
            "file": file,
            **item.model_dump(mode="json", exclude={"output", "lora", "low_noise_lora", "upscaled"}),
            "lora_sha256": item.lora.sha256,
            **({"low_noise_lora_sha256": item.low_noise_lora.sha256} if item.low_noise_lora else {}),
            **({"upscaled": upscaled} if upscaled else {}),
            "sha256": item.output.sha256,
        }
    if sheet:
        # Named by its content: each render run's sheet lies beside the earlier ones'.
        export(f"renders/{trigger}_renders_{sheet.sha256[:10]}.png", sheet)


def _claim(out: Path, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Mark `out` as ours and incomplete before the first file lands, so a cut-off export is still recognised.

    Returns the previous record and the files it lists that are still there.
    """
    remove_leftovers(out)
    previous = read_record(out) or {}
    files = {name: sha256 for name, sha256 in previous.get("files", {}).items() if (out / name).is_file()}
    _write_record(out, {**previous, "identity": identity, "complete": False, "run_key": None})
    return previous, files


def _exporter(out: Path, files: dict[str, str], store: ArtifactStore) -> Callable[[str, ArtifactRef | str], None]:
    """A function that writes text or an artifact under `out` and notes its sha256 in `files`."""

    def export(name: str, source: ArtifactRef | str) -> None:
        data = source.encode() if isinstance(source, str) else get_bytes(source, store)
        _write(out / name, data)
        files[name] = hashlib.sha256(data).hexdigest()

    return export


def _export_lora(lora: LoraRef, export: Callable[[str, ArtifactRef | str], None]) -> None:
    # The chosen LoRA under a name of its own: a loader given the folder would take the first step's file.
    for ref, name in zip(lora.best.files, best_lora_names(lora), strict=True):
        export(f"lora/{name}", ref)
    for checkpoint in lora.checkpoints:
        for ref in checkpoint.files:
            export(_in_lora("checkpoints", ref), ref)
        for ref in checkpoint.samples:
            export(_in_lora("samples", ref), ref)
    if lora.scores_plot:
        export(LORA_SCORES_PLOT, lora.scores_plot)
    if lora.strengths:
        export(strengths_entry(lora.strengths, lora.trigger)["grid"], lora.strengths.grid)

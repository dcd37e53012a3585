"""Checks that a run can write what it will write, made before any model loads.

A full disk or a read-only folder found after an hour of GPU work costs the hour; found here it
costs nothing. The sizes are an estimate of what the run writes, from its settings: images as raw RGB
(a PNG of a photo is smaller, of noise about as large), every shot kept at its first try, the LoRA's
parameter count from the video model's config, and a tenth more for what the estimate does not see.
Measured on tiny, it asks for 1.3x what a run wrote (bench/write_estimate.py prints both).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from likeness.config import ModelProfile, RunConfig
from likeness.media.imaging import contact_sheet_size
from likeness.models.profiles import ProfileUnavailable, model_path
from likeness.models.wan_flops import WAN_CONFIGS
from likeness.settings import Settings
from likeness.storage.local import LocalStore
from likeness.storage.store import ArtifactStore, StoreError

# Room left over for Prefect's records, logs and the odd file the estimate does not see: a part of the run's
# bytes, and at least a megabyte.
HEADROOM_FRACTION = 0.1
HEADROOM_MIN_BYTES = 1024 * 1024
# Images as raw RGB; a face mask (black, a white face) compresses to a small part of a byte a pixel.
RGB_BYTES = 3
MASK_BYTES_PER_PIXEL = 1 / 64
# H.264 at CRF 16 keeps well under a tenth of the raw frames.
VIDEO_FRACTION = 0.1
# A contact sheet's PNG: thumbnails of photos on white, about half its raw pixels.
SHEET_BYTES_PER_PIXEL = 1.5
# likeness.json, the dataset manifest, the identity-by-step plot: files whose size hardly follows the settings.
RECORD_BYTES = 128 * 1024
# When the video model's config is not on disk yet: Wan 2.2 TI2V-5B, the largest LoRA base the
# profiles name, and for `tiny:` sources the transformer `likeness.models.tiny` builds.
TINY_TRANSFORMER = {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 12}
# to_q, to_k, to_v, to_out.0 in self- and cross-attention: each a (dim -> dim) layer.
LORA_LAYERS_PER_BLOCK = 8


class WriteCheckFailed(RuntimeError):
    """The run could not write its outputs; the message names the path and the cause."""


def check_out_location(out: Path, settings: Settings, store: ArtifactStore) -> None:
    """Refuse an output folder inside Likeness' own data: its files would mix with the store's."""
    target = out.resolve()
    owned = {"the data folder": settings.data_dir.resolve(), "the models folder": settings.resolved_models_dir}
    if isinstance(store, LocalStore):
        owned["the artifact store"] = store.root
    for what, folder in owned.items():
        if target == folder or target.is_relative_to(folder):
            raise WriteCheckFailed(f"--out {out} is inside {what} ({folder}); choose a folder outside it")
        if folder.is_relative_to(target):
            raise WriteCheckFailed(f"--out {out} contains {what} ({folder}); choose a folder that does not")


def stored_video_transformer_config(profile: ModelProfile, settings: Settings) -> dict[str, Any] | None:
    """The LoRA base's transformer config as it is on disk, nothing built or downloaded; None where it is not."""
    source = profile.models["video"].source
    if source.startswith("tiny:"):
        # Where the tiny models are built on first use: looked at, not built.
        folder = settings.resolved_models_dir / "tiny" / source.removeprefix("tiny:")
    else:
        try:
            folder = model_path("video", profile, settings)
        except ProfileUnavailable:
            return None
    try:
        return json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return None


def video_transformer_config(profile: ModelProfile, settings: Settings) -> dict[str, Any]:
    """The LoRA base's transformer config: from disk, or before the weights are here the published one of the
    LoRA base (a pod may train without them ever being on this machine)."""
    stored = stored_video_transformer_config(profile, settings)
    if stored is not None:
        return stored
    return TINY_TRANSFORMER if profile.models["video"].source.startswith("tiny:") else WAN_CONFIGS[profile.train.base]


def lora_checkpoint_bytes(config: RunConfig, transformer: dict[str, Any]) -> int:
    """Bytes of one float32 LoRA checkpoint on a transformer with this config."""
    dim = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    per_block = LORA_LAYERS_PER_BLOCK * config.train.rank * (dim + dim)
    return transformer["num_layers"] * per_block * 4


def estimate_run_bytes(
    config: RunConfig, transformer: dict[str, Any], shots: int, reference_bytes: int
) -> tuple[int, int]:
    """What a run of `shots` dataset images is expected to write: (to the artifact store, to the output folder).

    The output folder holds the reference, the dataset, masks and contact sheet, the LoRA's checkpoints, the
    published LoRA and its samples, and the renders with their sheet; the store holds all of that and each edit
    before its upscale. Each try curation refuses adds one edit and one cell of the sheet."""
    dataset, train, render = config.dataset, config.train, config.render
    final_images = shots * dataset.upscale.size**2 * RGB_BYTES
    masks = int(shots * dataset.upscale.size**2 * MASK_BYTES_PER_PIXEL)
    sheet = int(math.prod(contact_sheet_size(shots + 1)) * SHEET_BYTES_PER_PIXEL)  # the reference and the kept images
    experts = len(train.trained_experts)
    lora = (train.checkpoint_count + 1) * experts * lora_checkpoint_bytes(config, transformer)
    samples = train.checkpoint_count * len(train.sample_prompts) * train.size**2 * RGB_BYTES
    stills, videos = len(render.image_prompts), len(render.video_prompts)
    renders = stills * render.size**2 * RGB_BYTES
    renders += int(videos * render.video_frames * render.size**2 * RGB_BYTES * VIDEO_FRACTION)
    renders += int(math.prod(contact_sheet_size(stills + videos)) * SHEET_BYTES_PER_PIXEL)
    out_bytes = reference_bytes + final_images + masks + sheet + lora + samples + renders + RECORD_BYTES
    edits = shots * dataset.edit.size**2 * RGB_BYTES
    return out_bytes + edits, out_bytes


def headroom(size: int) -> int:
    """What a filesystem must have free beyond `size`, the estimate of what the run writes there."""
    return max(int(size * HEADROOM_FRACTION), HEADROOM_MIN_BYTES)


def _existing_ancestor(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def probe_writable(folder: Path) -> None:
    """Write and remove a small file in `folder` (or its nearest existing parent): WriteCheckFailed if that fails."""
    target = _existing_ancestor(folder)
    try:
        fd, name = tempfile.mkstemp(dir=target, prefix=".likeness-probe-")
        try:
            os.write(fd, b"likeness")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise WriteCheckFailed(f"cannot write to {folder} ({target}): {exc.strerror}") from None


def probe_store(store: ArtifactStore) -> None:
    """Put and delete a small object: a store that refuses writes fails here, not after the first stage."""
    key = f"probes/{uuid.uuid4().hex}"
    try:
        store.put_bytes(key, b"likeness")
        store.delete(key)
    except StoreError as exc:
        raise WriteCheckFailed(f"cannot write to the artifact store: {exc}") from None


def check_writable(out: Path, store: ArtifactStore, needs: tuple[int, int]) -> None:
    """The output folder and the store can be written, with room for what the run will write."""
    store_bytes, out_bytes = needs
    probe_writable(out)
    wanted: dict[int, tuple[Path, int]] = {}
    out_root = _existing_ancestor(out)
    wanted[out_root.stat().st_dev] = (out_root, out_bytes)
    if not isinstance(store, LocalStore):
        probe_store(store)
    else:
        probe_writable(store.root / "tmp")
        device = store.root.stat().st_dev
        folder, already = wanted.get(device, (store.root, 0))
        wanted[device] = (folder, already + store_bytes)
    for folder, size in wanted.values():
        free = shutil.disk_usage(folder).free
        if free < size + headroom(size):
            raise WriteCheckFailed(
                f"not enough free space on the filesystem of {folder}: this run writes about "
                f"{_human(size + headroom(size))} there and {_human(free)} is free"
            )


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"

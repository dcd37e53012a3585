"""The "tiny" model profile: every model role with its real architecture, a tiny config and
random weights, built offline and saved as a local repo folder.

Production code loads these folders with the same `from_pretrained` / spandrel calls it uses for
the real hub repos, so flows, tests and benchmarks run the real code paths on a CPU in seconds.
Builds are deterministic: every component is created right after a fixed `torch.manual_seed`,
tokenizers are built from a fixed word list, so two builds write byte-identical weight files.

Real counterparts: editor = Qwen/Qwen-Image-Edit-2511, editor-lightning = its 4-step Lightning LoRA
(lightx2v/Qwen-Image-Edit-2511-Lightning), refiner = FLUX.1 (img2img),
upscaler = ESRGAN 4x (RRDBNet), captioner = Qwen/Qwen3-VL-8B-Instruct,
video = Wan 2.x text-to-video (diffusers layout), video-a14b = Wan-AI/Wan2.2-T2V-A14B-Diffusers (two experts:
`transformer` for high noise, `transformer_2` for low noise, split at boundary_ratio 0.875),
video-a14b-lightx2v = lightx2v/Wan2.2-Distill-Loras' T2V A14B 4-step LoRAs (high and low noise),
animator = Wan-AI/Wan2.2-I2V-A14B-Diffusers, animator-lightx2v = its I2V A14B 4-step LoRAs,
prompter = a chat LM laid out as Qwen/Qwen3-4B-Instruct-2507,
uso = bytedance-research/USO's DiT LoRA and SigLIP projector for the refiner,
siglip = the image encoder USO's projector reads (google/siglip-so400m-patch14-384).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from likeness.models.tiny.images import (
    build_editor,
    build_editor_lightning,
    build_refiner,
    build_refiner_klein,
    build_upscaler,
)
from likeness.models.tiny.parts import byte_level_bpe as _byte_level_bpe  # noqa: F401 (tests build tokenizers with it)
from likeness.models.tiny.text import build_captioner, build_prompter
from likeness.models.tiny.uso import build_siglip, build_uso
from likeness.models.tiny.video import (
    build_animator,
    build_animator_lightx2v,
    build_video,
    build_video_a14b,
    build_video_a14b_lightx2v,
)

TINY_ROLES = (
    "editor", "editor-lightning", "refiner", "refiner-klein", "upscaler", "captioner", "video", "video-a14b",
    "video-a14b-lightx2v", "animator", "animator-lightx2v", "prompter", "uso", "siglip",
)  # fmt: skip

_MARKER = ".complete"


def build_tiny_models(root: Path, roles: Iterable[str] = TINY_ROLES) -> dict[str, Path]:
    """Build (once) the tiny model repos under root/<role>; returns role -> folder. Idempotent:
    a role whose folder is complete (marker file written last, e.g. root/<role>/.complete) is not rebuilt.
    Writes into a temp folder beside it then renames, so a crash never leaves a half-built repo."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = {}
    for role in roles:
        if role not in _BUILDERS:
            raise ValueError(f"unknown tiny role {role!r}; expected one of {TINY_ROLES}")
        folder = root / role
        if not (folder / _MARKER).exists():
            _build_atomically(folder, _BUILDERS[role])
        folders[role] = folder
    return folders


def _build_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        (staging / _MARKER).write_text("built by likeness.models.tiny\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the repo folder should read like any other
        if (folder / _MARKER).exists():
            return  # another process built the same role meanwhile, and may be reading it already
        if folder.exists():
            # Left incomplete by a crash: a folder only ever appears whole, renamed from its staging folder.
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process finished the same role first; its folder is as good as ours.
            if not (folder / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "editor": build_editor,
    "editor-lightning": build_editor_lightning,
    "refiner": build_refiner,
    "refiner-klein": build_refiner_klein,
    "upscaler": build_upscaler,
    "captioner": build_captioner,
    "video": build_video,
    "video-a14b": build_video_a14b,
    "video-a14b-lightx2v": build_video_a14b_lightx2v,
    "animator": build_animator,
    "animator-lightx2v": build_animator_lightx2v,
    "prompter": build_prompter,
    "uso": build_uso,
    "siglip": build_siglip,
}

"""A LoRA training folder as AI Toolkit reads it: images with same-stem `.txt` captions, masks beside it.

Checked before any GPU time is spent: a folder with no captioned image, an image without a caption, a caption
without an image or a mask missing for an image are refused, naming the files.

    images = read_training_folder(Path("likeness-out/ada/dataset"), Path("likeness-out/ada/masks"))
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from likeness.inputs import InvalidInput
from likeness.records import TrainingSet
from likeness.storage.artifacts import ArtifactRef

# What AI Toolkit's data loader trains on (it also takes video, which a character LoRA does not use).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SHOWN = 5


class DatasetProblem(InvalidInput):
    """A training folder that a trainer would refuse or train on wrongly."""


class TrainingImage(BaseModel):
    """One image of a training folder, its caption and its loss mask."""

    model_config = ConfigDict(frozen=True)

    image: Path
    caption: str
    mask: Path | None = None


def training_files(training: TrainingSet, masks: bool = True) -> list[tuple[str, ArtifactRef | str]]:
    """The training folder's files by path: `dataset/` images (in the store) and captions (text), `masks/` beside."""
    files: list[tuple[str, ArtifactRef | str]] = []
    for item in training.items:
        image = Path(item.filename)
        files += [(f"dataset/{image}", item.image), (f"dataset/{image.with_suffix('.txt')}", item.caption + "\n")]
        if masks and item.mask is not None:
            # The mask keeps its own format; a trainer finds it by the image's stem.
            files.append((f"masks/{image.with_suffix(Path(item.mask.filename).suffix)}", item.mask))
    return files


def _listed(paths: list[Path]) -> str:
    names = ", ".join(path.name for path in paths[:SHOWN])
    return names + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def read_training_folder(folder: Path, masks: Path | None = None) -> list[TrainingImage]:
    """The captioned images of `folder` (and, with `masks`, each one's mask of the same stem), sorted by name."""
    if not folder.is_dir():
        raise DatasetProblem(f"dataset folder {folder} does not exist or is not a folder")
    # AI Toolkit walks sub-folders too (not dot-folders): an image there would train without us knowing.
    images = sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in path.relative_to(folder).parts)
    )
    captions = {path.with_suffix("") for path in folder.rglob("*.txt")}
    if not images:
        raise DatasetProblem(
            f"dataset folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}): nothing to train on"
        )
    uncaptioned = [image for image in images if image.with_suffix("") not in captions]
    if uncaptioned:
        raise DatasetProblem(
            f"dataset folder {folder}: {len(uncaptioned)} of {len(images)} images have no caption "
            f"(a .txt file of the same name): {_listed(uncaptioned)}"
        )
    orphans = sorted(stem.with_suffix(".txt") for stem in captions - {image.with_suffix("") for image in images})
    if orphans:
        raise DatasetProblem(f"dataset folder {folder}: captions without an image: {_listed(orphans)}")
    empty = [image for image in images if not image.with_suffix(".txt").read_text().strip()]
    if empty:
        raise DatasetProblem(f"dataset folder {folder}: empty captions for {_listed(empty)}")
    found = []
    for image in images:
        mask = None
        if masks is not None:
            candidates = [masks / image.relative_to(folder).with_suffix(s) for s in IMAGE_SUFFIXES]
            mask = next((c for c in candidates if c.is_file()), None)
        found.append(TrainingImage(image=image, caption=image.with_suffix(".txt").read_text().strip(), mask=mask))
    unmasked = [item.image for item in found if masks is not None and item.mask is None]
    if unmasked:
        # AI Toolkit gives an image without a mask, in a batch with masks, no loss at all.
        raise DatasetProblem(
            f"mask folder {masks}: no mask for {len(unmasked)} images: {_listed(unmasked)} "
            "(train with masks off: --set train.masks=false)"
        )
    return found

"""What the stages hand each other: small typed records that point at bytes in the artifact store."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from likeness.dataset.curation import Figures
from likeness.storage.artifacts import ArtifactRef


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class UpscaleResult(Record):
    """The 2K refined image and what the identity guard measured to choose its start step."""

    image: ArtifactRef
    # The start step the guard chose, or the configured one where identity could not be measured.
    start_step: int
    # Identity distance to the reference of the ESRGAN output (None: no reference, or no face found).
    pre_refine_distance: float | None
    identity_distance: float | None
    # Every start step refined and its distance, in the order tried.
    tries: tuple[tuple[int, float | None], ...]


class Rejection(Record):
    """One try that curation refused: the image, its figures and why, kept for the manifest and contact sheet."""

    shot: str
    attempt: int
    seed: int
    image: ArtifactRef
    figures: Figures
    reasons: tuple[str, ...]


class DatasetItem(Record):
    """One kept training image: where it came from, what was measured on it, and its caption."""

    shot: str
    entry: str
    group: str
    intensity: float | None
    edit_prompt: str
    seed: int
    attempt: int
    edited: ArtifactRef
    figures: Figures
    upscale: UpscaleResult
    mask: ArtifactRef
    caption: str
    rejected: tuple[Rejection, ...] = ()

    @property
    def image(self) -> ArtifactRef:
        """The training image: the edit, upscaled and refined."""
        return self.upscale.image

    def filename(self, trigger: str) -> str:
        """The AI Toolkit / kohya file name of the image; the caption and the mask share its stem."""
        return f"{trigger}_{self.shot}.png"


class DatasetRef(Record):
    trigger: str
    reference: ArtifactRef
    items: tuple[DatasetItem, ...]
    # Shots whose every try was refused: they are not in the dataset, their tries are in the manifest.
    dropped: tuple[tuple[Rejection, ...], ...] = ()
    identity_checked: bool
    # Phrases found in every caption: the LoRA would bake them in beside the trigger word.
    repeated_phrases: tuple[str, ...] = ()
    manifest: ArtifactRef
    contact_sheet: ArtifactRef


class LoraCheckpoint(Record):
    step: int
    loss: float
    weights: ArtifactRef


class LoraRef(Record):
    """The checkpoints of one LoRA training run, oldest first; the last is the final LoRA."""

    trigger: str
    base_model: str
    checkpoints: tuple[LoraCheckpoint, ...]

    @property
    def final(self) -> LoraCheckpoint:
        return self.checkpoints[-1]


class RenderItem(Record):
    """A rendered image or video and its lineage: enough to make it again."""

    kind: str
    prompt: str
    negative_prompt: str
    seed: int
    frames: int
    steps: int
    size: int
    lora: ArtifactRef
    lora_scale: float
    model: str
    output: ArtifactRef


class CharacterResult(Record):
    """What a run made: a `dataset` run has only the dataset."""

    dataset: DatasetRef
    lora: LoraRef | None = None
    renders: tuple[RenderItem, ...] = ()

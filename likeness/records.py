"""What the stages hand each other: small typed records that point at bytes in the artifact store."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from likeness.artifacts import ArtifactRef


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class DatasetItem(Record):
    """One training image of the dataset and its caption."""

    variation: str
    image: ArtifactRef
    caption: str
    edit_prompt: str
    seed: int

    def filename(self, trigger: str) -> str:
        """The AI Toolkit / kohya file name of the image; the caption is the same name in `.txt`."""
        return f"{trigger}_{self.variation}.png"


class DatasetRef(Record):
    trigger: str
    reference: ArtifactRef
    items: tuple[DatasetItem, ...]
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
    dataset: DatasetRef
    lora: LoraRef
    renders: tuple[RenderItem, ...]

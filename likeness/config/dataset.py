"""The dataset stage's settings: the edit, the upscale and refine, the captions, and a profile's dataset defaults."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from likeness.base import Frozen
from likeness.config.base import Seed
from likeness.config.limits import Stage
from likeness.dataset.captions import DEFAULT_PROMPT
from likeness.dataset.curation import CurationConfig


class EditConfig(Stage):
    """Qwen-Image-Edit settings for the variation stage."""

    # The long side of every shot; the flow sets the short side from the shot's aspect.
    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    # True CFG below 1 would push away from the prompt; 1 turns it off.
    true_cfg_scale: float = Field(ge=1.0)
    # The pipeline rounds condition images to multiples of 32 px: a smaller area rounds to nothing.
    condition_area: int = Field(ge=32 * 32)
    vl_condition_area: int = Field(ge=32 * 32)


class UpscaleConfig(Stage):
    """ESRGAN 4x in tiles, resize to a long side of `size`, then a FLUX img2img refine in overlapping tiles.

    The refine runs the last steps of `steps` from a start step the identity guard picks per image: the lowest
    in `start_steps` (low, high) whose identity distance stays within `identity_tolerance` of the ESRGAN
    output's. Where identity cannot be measured (no reference embedding, no face) it starts at `start_step`.

    With `uso`, every refine is conditioned on the character's reference as ByteDance USO does it (the refiner's
    `uso` files): the reference's face and surroundings, scaled to a long side of `uso_subject_size`, enter the
    transformer as subject tokens beside the image's; with `uso_style` the same crop is USO's style reference too.
    """

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    start_step: int = Field(ge=0)
    start_steps: tuple[int, int]
    identity_tolerance: float = Field(ge=0.0)
    # The guard judges a start step on the refine's own tile around the face, which the whole image's refine then
    # blends in as it was judged; false: on the face's surroundings, refined on their own and then again in the
    # whole image (three to four times the tiles for a head-and-shoulders shot).
    guard_on_tile: bool = True
    guidance_scale: float = Field(ge=0.0)
    # The refine's tiles (output pixels) and the ESRGAN's (input pixels), and how much neighbours overlap.
    tile: int = Field(gt=0)
    overlap: int = Field(ge=0)
    esrgan_tile: int = Field(gt=0)
    esrgan_overlap: int = Field(ge=0)
    uso: bool = False
    # 512 is USO's own content reference size (its inference.py's `content_ref`).
    uso_subject_size: int = Field(default=512, ge=16)
    uso_style: bool = False

    @model_validator(mode="after")
    def _style_with_subject(self) -> UpscaleConfig:
        if self.uso_style and not self.uso:
            raise ValueError("uso_style needs uso: the style reference is a part of USO's conditioning")
        return self

    @model_validator(mode="after")
    def _start_inside_schedule(self) -> UpscaleConfig:
        if self.start_step >= self.steps:
            raise ValueError(
                f"start_step ({self.start_step}) must be below steps ({self.steps}): "
                "the refine has to run at least one step"
            )
        low, high = self.start_steps
        if not 0 <= low <= high < self.steps:
            raise ValueError(f"start_steps ({low}, {high}) must be a range 0 <= low <= high below steps ({self.steps})")
        return self

    @model_validator(mode="after")
    def _overlap_inside_tile(self) -> UpscaleConfig:
        for tile, overlap in (("tile", "overlap"), ("esrgan_tile", "esrgan_overlap")):
            if getattr(self, overlap) >= getattr(self, tile):
                raise ValueError(
                    f"{overlap} ({getattr(self, overlap)}) must be below {tile} ({getattr(self, tile)}): "
                    "neighbouring tiles cannot overlap by a whole tile"
                )
        return self

    @property
    def strength(self) -> float:
        """The img2img strength that starts the refine at `start_step`."""
        return self.strength_at(self.start_step)

    def strength_at(self, start_step: int) -> float:
        """The img2img strength that makes diffusers skip exactly `start_step` of `steps` steps."""
        # diffusers computes int(steps - steps * strength): nudge the ratio down where floating point lands it
        # a hair above the exact value (25 steps from step 11 would otherwise start at step 10).
        strength = (self.steps - start_step) / self.steps
        while int(self.steps - min(self.steps * strength, self.steps)) != start_step:
            strength = math.nextafter(strength, 0.0)
        return strength


class CaptionConfig(Stage):
    """A VLM's sentence on what varies in each image (pose, expression, clothing, ...), after the trigger and tags."""

    # The length control: the description is cut to this many words, at a word boundary.
    max_words: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)
    prompt: str = DEFAULT_PROMPT

    @model_validator(mode="after")
    def _room_for_the_words(self) -> CaptionConfig:
        if not self.prompt.strip():
            raise ValueError("the caption prompt is empty")
        if self.max_new_tokens < self.max_words:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) is below max_words ({self.max_words}): "
                "every word takes at least one token"
            )
        return self


class DatasetConfig(Stage):
    """What the dataset stage makes: which catalogue entries, how they are curated, edited, refined, captioned."""

    # Catalogue entry ids (see `likeness/dataset/catalogue/default.yaml`); None: every entry of the run's catalogue.
    variations: tuple[str, ...] | None = None
    seed: Seed = 0
    curation: CurationConfig = CurationConfig()
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig

    @model_validator(mode="after")
    def _some_variations(self) -> DatasetConfig:
        # Whether the ids exist is checked against the run's catalogue (`Catalogue.shots`).
        if self.variations is not None:
            if not self.variations:
                raise ValueError("the dataset needs at least one variation")
            if len(set(self.variations)) != len(self.variations):
                raise ValueError(f"variations repeat: {', '.join(self.variations)}")
        return self


class DatasetDefaults(Frozen):
    """A profile's dataset defaults: which catalogue entries (None: all) and the curation thresholds."""

    variations: tuple[str, ...] | None = None
    curation: CurationConfig = CurationConfig()

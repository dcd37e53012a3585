"""The limits of a profile's models as data (`Limits`), the settings of a stage checked against them (`Stage`),
and the dataset's shot count."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, Field, model_validator

from likeness.base import Frozen
from likeness.config.base import HARD_ADVICE, SOFT_ADVICE, InvalidSettings


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Problem(NamedTuple):
    """One way a setting goes past its limits; `soft` ones may be passed deliberately."""

    text: str
    soft: bool


class Ceiling(Frozen):
    """The largest value of a setting; `why` is a phrase that follows "is above <max>,"."""

    max: float
    why: str


class Multiple(Frozen):
    """A step a setting's value must be a multiple of (always hard); `why` follows "is not a multiple of <of>,"."""

    of: int = Field(gt=0)
    why: str

    def problem(self, subject: str, value: float) -> Problem | None:
        """The problem of `value` if it is not a multiple, with the nearest multiples to use instead."""
        if not value % self.of:
            return None
        below = int(value) // self.of * self.of
        nearest = f"{below} or {below + self.of}" if below else str(self.of)
        return Problem(f"{subject} is not a multiple of {self.of}, {self.why}; use {nearest}", soft=False)


class Limit(Frozen):
    """The bounds of one setting: a soft and/or a hard ceiling, and a multiple its value must be."""

    soft: Ceiling | None = None
    hard: Ceiling | None = None
    multiple: Multiple | None = None

    @model_validator(mode="after")
    def _has_a_ceiling(self) -> Limit:
        if self.soft is None and self.hard is None:
            raise ValueError("a limit needs a soft or a hard ceiling")
        if self.soft and self.hard and self.soft.max > self.hard.max:
            raise ValueError(
                f"the soft ceiling ({_number(self.soft.max)}) is above the hard one ({_number(self.hard.max)})"
            )
        return self

    def problems(self, subject: str, value: float) -> list[Problem]:
        """How `value` goes past this limit; `subject` names it, e.g. `render.size=4096`."""
        found = []
        off_step = self.multiple.problem(subject, value) if self.multiple else None
        if off_step:
            found.append(off_step)
        if self.hard and value > self.hard.max:
            found.append(
                Problem(f"{subject} is above {_number(self.hard.max)}, {self.hard.why}; {HARD_ADVICE}", soft=False)
            )
        elif self.soft and value > self.soft.max:
            found.append(Problem(f"{subject} is above {_number(self.soft.max)}, {self.soft.why}", soft=True))
        return found


def _soft(max: float, why: str, multiple: Multiple | None = None) -> Limit:
    return Limit(soft=Ceiling(max=max, why=why), multiple=multiple)


def _hard(max: float, why: str) -> Limit:
    return Limit(hard=Ceiling(max=max, why=why))


# The defaults are the limits of the models the production and permissive profiles use: Qwen-Image-Edit-2511,
# FLUX.1 (dev or schnell), Qwen3-VL and Wan 2.2 TI2V-5B. A profile for other models states its own.


class EditLimits(Frozen):
    """Qwen-Image-Edit-2511 (or 2509), with or without its 4-step Lightning LoRA."""

    size: Limit = _soft(
        2048,
        "the largest size Qwen-Image-Edit makes sensibly (it was trained up to 1328 px)",
        # diffusers silently rounds other sizes down, and every later stage would get the wrong size.
        Multiple(of=16, why="as Qwen-Image's VAE downsamples 8x and its transformer packs 2x2 latent patches"),
    )
    # 40 steps at true CFG 4 is the base model's setting (two 20B passes a step); Lightning runs 4 steps, CFG off.
    steps: Limit = _soft(100, "2.5 times the 40 steps Qwen-Image-Edit is run at without Lightning")
    true_cfg_scale: Limit = _soft(10, "past which true CFG burns colours and contrast (Qwen-Image-Edit uses 4)")
    condition_area: Limit = _soft(
        2048 * 2048, "the area of a 2048 px square, the largest Qwen-Image-Edit makes sensibly"
    )
    vl_condition_area: Limit = _soft(
        1024 * 1024,
        "the area of a 1024 px square, about 1300 Qwen2.5-VL image tokens (the pipeline's default is 384 px)",
    )


class UpscaleLimits(Frozen):
    """ESRGAN 4x and a FLUX.1-dev img2img refine."""

    size: Limit = _soft(
        2048,
        "4 MP, the size the seed workflow refines at (FLUX.1 itself generates up to about 2 MP)",
        Multiple(of=16, why="as FLUX's VAE downsamples 8x and its transformer packs 2x2 latent patches"),
    )
    steps: Limit = _soft(100, "twice the 50 steps FLUX.1-dev's examples use (more steps only cost time)")
    guidance_scale: Limit = _soft(10, "past which FLUX.1-dev's distilled guidance burns images (it is run at 2-5)")
    tile: Limit = _soft(
        1536,
        "2.4 MP, past the 2 MP or so FLUX.1 generates well at (a 1024 px tile is its native size)",
        Multiple(of=16, why="as FLUX's VAE downsamples 8x and its transformer packs 2x2 latent patches"),
    )
    # A 64-filter ESRGAN holds several 64-channel float32 maps at 4x the tile: 1 GB each for a 512 px tile.
    esrgan_tile: Limit = _soft(1024, "as a 64-filter ESRGAN then holds 4 GB per feature map (at 4096x4096)")
    identity_tolerance: Limit = _soft(0.3, "half the 0.6 distance at which dlib's face model calls two faces strangers")
    uso_subject_size: Limit = Limit(
        soft=Ceiling(max=512, why="the content reference size USO runs at (its inference.py's content_ref)"),
        hard=Ceiling(max=1024, why="the largest content reference USO's own demo takes"),
        # USO's preprocess_ref crops the reference to multiples of 16 before the VAE.
        multiple=Multiple(of=16, why="as USO crops its references to multiples of 16 (FLUX's VAE and 2x2 packing)"),
    )


class CaptionLimits(Frozen):
    """Qwen3-VL Instruct (2B, 4B or 8B)."""

    # English runs about 1.3 tokens a word: a one-sentence caption needs well under 100 new tokens.
    max_new_tokens: Limit = Limit(
        soft=Ceiling(max=512, why="several times what a one-sentence caption needs; more tokens only cost time"),
        hard=Ceiling(max=262_144, why="Qwen3-VL's 256K-token context, which the prompt and the image's tokens share"),
    )
    max_words: Limit = _soft(
        200, "a paragraph rather than the one sentence a caption should be (Wan's UMT5 reads 512 tokens, ~390 words)"
    )


class TrainLimits(Frozen):
    """A peft LoRA on the Wan 2.2 TI2V-5B transformer."""

    size: Limit = _soft(
        1280,
        "the longest side Wan 2.2 TI2V-5B was trained at (1280x704)",
        # The 5B's Wan 2.2 VAE compresses 16x; the A14B models use Wan 2.1's 8x VAE and take multiples of 16.
        Multiple(of=32, why="as Wan 2.2 TI2V-5B's VAE downsamples 16x and its transformer patches 2x2"),
    )
    # AI Toolkit's Wan LoRAs train 2000 steps; the seed's took about 1.5 h on an RTX 5090.
    steps: Limit = _soft(10_000, "five times the 2000 steps a character LoRA takes (about 7 hours on one GPU)")
    checkpoint_every: Limit = _soft(
        10_000, "the most training steps, so no checkpoint but the final one (always saved) could fall due"
    )
    # A rank-32 LoRA on the 5B's attention layers is about 190 MB in float32.
    checkpoints: Limit = _soft(100, "as every checkpoint is kept in the artifact store (about 190 MB each at rank 32)")
    rank: Limit = _soft(128, "four times the rank 32 AI Toolkit uses for Wan; checkpoints grow with the rank")
    learning_rate: Limit = _soft(
        0.001, "ten times the 1e-4 AI Toolkit uses for Wan LoRAs, past which LoRA training tends to diverge"
    )
    sample_steps: Limit = _soft(100, "twice the 50 steps Wan 2.2 is run at (samples only need to show the face)")
    sample_guidance_scale: Limit = _soft(10, "twice the guidance Wan 2.2 is run at (5), past which samples burn")


class RenderLimits(Frozen):
    """Wan 2.2 TI2V-5B text-to-image and text-to-video with the LoRA."""

    size: Limit = _soft(
        1280,
        "the largest size Wan 2.2 renders (720p: 1280x704)",
        Multiple(of=32, why="as Wan 2.2 TI2V-5B's VAE downsamples 16x and its transformer patches 2x2"),
    )
    steps: Limit = _soft(100, "twice the 50 steps Wan 2.2 is run at (more steps only cost time)")
    video_frames: Limit = _soft(121, "the clip length Wan 2.2 TI2V-5B was trained on (5 s at 24 fps)")
    fps: Limit = _soft(60, "2.5 times the 24 fps Wan 2.2 TI2V-5B's motion is timed for")
    guidance_scale: Limit = _soft(10, "twice the guidance Wan 2.2 is run at (5), past which renders burn")
    lora_scale: Limit = _soft(2, "twice the strength the LoRA was trained at, past which it burns the character in")
    speed_lora_scale: Limit = _soft(2, "twice the strength the speed LoRAs were distilled at")
    upscale_long_side: Limit = _soft(
        3840,
        "4K UHD's long side (3840x2160), what the video upscale is for",
        Multiple(of=2, why="as H.264's yuv420p halves the colour planes both ways"),
    )
    upscale_memory_mb: Limit = _soft(143_360, "the 140 GB of an H200, the most memory one GPU has")
    # UMT5 averages about 4 characters a token in English: 1024 characters leave room for denser text.
    prompt_chars: Limit = _soft(1024, "a proxy for the 512 tokens Wan's UMT5 text encoder reads (it drops the rest)")


class DatasetLimits(Frozen):
    """The shots the catalogue makes of the reference (`variations` counts shots, checked by `check_shot_count`)."""

    # Each shot is an edit (and its retries), a 2K refine, a mask and a caption: about a minute on one GPU.
    variations: Limit = _soft(60, "half again the 24-40 images the default catalogue makes for a character LoRA")


class Limits(Frozen):
    """The limits of a profile's models, by stage; a section or setting a profile leaves out takes the default."""

    dataset: DatasetLimits = DatasetLimits()
    edit: EditLimits = EditLimits()
    upscale: UpscaleLimits = UpscaleLimits()
    caption: CaptionLimits = CaptionLimits()
    train: TrainLimits = TrainLimits()
    render: RenderLimits = RenderLimits()


class Stage(Frozen):
    """The settings of one stage; each numeric one is checked against the limit of the same name."""

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """How these settings, found at `path`, go past `limits` (the profile's section for this stage)."""
        problems = []
        for name, limit in limits:
            value = getattr(self, name, None)
            if isinstance(value, int | float):
                problems += limit.problems(f"{path}.{name}={_number(value)}", value)
        return problems


def check_shot_count(count: int, limits: Limits, beyond_limits: bool = False) -> None:
    """Refuse a dataset of more shots than the profile's limit (soft limits pass with `beyond_limits`)."""
    problems = limits.dataset.variations.problems(f"the number of dataset shots ({count})", count)
    problems = [p for p in problems if not (p.soft and beyond_limits)]
    if problems:
        raise InvalidSettings([f"{p.text}; {SOFT_ADVICE}" if p.soft else p.text for p in problems])
    if count == 0:
        raise InvalidSettings(["the catalogue and variations give no shots: choose at least one variation"])

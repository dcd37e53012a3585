"""Typed per-run configuration: model profiles and the knobs of each stage, with defaults and limits.

A model profile names the model behind each role, the stage defaults that suit those models, and the
limits of those models as data (`Limits`), so that a profile for another model states its own. A
run's configuration starts from the profile's defaults, takes the user's overrides, and is checked
against the limits before any work: hard limits are what the model cannot do, soft limits are sane
time and machine bounds a user may pass deliberately (`beyond_limits`). Flows receive the resolved
configuration, so the cache key of a stage sees every value that shapes its output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from string import Formatter
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from likeness.dataset.captions import DEFAULT_PROMPT
from likeness.dataset.curation import CurationConfig
from likeness.inputs import InvalidInput

Role = Literal["editor", "refiner", "upscaler", "captioner", "video", "animator"]
# Every profile names these; the animator (image-to-video, for `render --animate`) is optional.
ROLES: tuple[Role, ...] = ("editor", "refiner", "upscaler", "captioner", "video")

# The names a prompt template may use, as {name}; values come from the run (the trigger word today).
PROMPT_PLACEHOLDERS: frozenset[str] = frozenset({"trigger"})
# 32-bit seeds, like the per-variation seeds the dataset derives: every generator takes them (numpy's
# legacy seeding stops at 2**32) and they survive JSON in Prefect's UI, whose numbers are doubles.
SEED_RANGE = 2**32
SOFT_ADVICE = "pass --beyond-limits to go past it deliberately"
HARD_ADVICE = "--beyond-limits does not lift hard limits"


class Frozen(BaseModel):
    # No NaN or infinity: every comparison with a limit would pass or fail by accident.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class InvalidSettings(InvalidInput):
    """Settings Likeness refuses before any work, one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> InvalidSettings:
        """pydantic's errors as one line each: the setting's path, its value where it is one, the message."""
        problems = []
        for detail in error.errors(include_url=False):
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in detail["loc"]).lstrip(".")
            message = detail["msg"].removeprefix("Value error, ")
            value = detail.get("input")
            if detail["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown setting")
            elif not path:
                problems.extend(message.splitlines())
            elif isinstance(value, str | int | float):
                problems.append(f"{path}={_shown(value)}: {message}")
            else:
                problems.append(f"{path}: {message}")
        return cls(problems)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _shown(value: str | float) -> str:
    """A value for a one-line message, as JSON: strings quoted, control characters escaped, long ones cut."""
    if isinstance(value, str) and len(value) > 80:
        value = value[:77] + "..."
    return json.dumps(value, ensure_ascii=False)


# Prompt templates ------------------------------------------------------------------------------------------------


def _allowed_placeholders() -> str:
    names = sorted(f"{{{name}}}" for name in PROMPT_PLACEHOLDERS)
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def template_problem(template: str) -> str | None:
    """What is wrong with a prompt template, or None: it may hold only {name} for names in PROMPT_PLACEHOLDERS."""
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template) if name is not None
        ]
    except ValueError as exc:
        return f"unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"
    use = f"use {_allowed_placeholders()}"
    for name, spec, conversion in fields:
        written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        base = name.partition(".")[0].partition("[")[0]
        if not base or base.isdigit():
            return f"positional field {written} is not allowed; {use}"
        if base != name:
            return f"attribute or index access in {written} is not allowed; {use}"
        if name not in PROMPT_PLACEHOLDERS:
            return f"unknown placeholder {written}; {use} (write {{{{ and }}}} for literal braces)"
        if conversion:
            return f"conversion !{conversion} in {written} is not allowed; {use}"
        if spec:
            return f"format spec :{spec} in {written} is not allowed; {use}"
    return None


def render_template(template: str, **values: str) -> str:
    """The prompt `template` with its placeholders filled from `values`; `{{` and `}}` are literal braces."""
    problem = template_problem(template)
    if problem:
        raise InvalidSettings([f"{_shown(template)}: {problem}"])
    parts = []
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            if name not in values:
                raise ValueError(f"prompt template {_shown(template)} needs a value for {{{name}}}")
            parts.append(values[name])
    return "".join(parts)


def _checked_template(template: str) -> str:
    problem = template_problem(template)
    if problem:
        raise ValueError(problem)
    return template


def _checked_seed(seed: int) -> int:
    if not 0 <= seed < SEED_RANGE:
        raise ValueError(
            f"a seed must be 0 to {SEED_RANGE - 1} (32 bits), the range every generator takes; {HARD_ADVICE}"
        )
    return seed


PromptTemplate = Annotated[str, AfterValidator(_checked_template)]
Seed = Annotated[int, AfterValidator(_checked_seed)]


# Limits --------------------------------------------------------------------------------------------------------


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


# Stage settings ---------------------------------------------------------------------------------------------------


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


class LoraSpec(Frozen):
    """A LoRA file fused into a role's model at `scale` (e.g. a step-distillation LoRA); found like a model."""

    source: str
    file: str
    revision: str | None = None
    licence: str
    # 1 is the strength the authors of a distillation LoRA publish; 0 would be no LoRA at all.
    scale: float = Field(default=1.0, gt=0)


class ModelSpec(Frozen):
    """Where one role's weights come from: a hub repo id, a local folder, or `tiny:<role>`; optionally a LoRA
    fused into them and the scheduler config values that go with it."""

    source: str
    file: str | None = None
    revision: str | None = None
    licence: str
    lora: LoraSpec | None = None
    # Replace values of the model's own scheduler config (a FlowMatchEulerDiscreteScheduler); null clears one.
    scheduler: dict[str, bool | int | float | str | None] | None = None
    # The video role's step-distillation LoRAs, loaded beside the character LoRA for renders only (never for
    # training): `high_noise` into `transformer`, `low_noise` into Wan 2.2 A14B's `transformer_2`.
    speed_loras: dict[Expert, LoraSpec] = {}
    # The sigmas those LoRAs were distilled on; renders step exactly these, with Euler.
    speed_sigmas: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _sigmas_with_speed_loras(self) -> ModelSpec:
        if bool(self.speed_loras) != bool(self.speed_sigmas):
            raise ValueError("speed_loras and speed_sigmas go together: the LoRAs are distilled on those sigmas")
        return self


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
    """

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    start_step: int = Field(ge=0)
    start_steps: tuple[int, int]
    identity_tolerance: float = Field(ge=0.0)
    guidance_scale: float = Field(ge=0.0)
    # The refine's tiles (output pixels) and the ESRGAN's (input pixels), and how much neighbours overlap.
    tile: int = Field(gt=0)
    overlap: int = Field(ge=0)
    esrgan_tile: int = Field(gt=0)
    esrgan_overlap: int = Field(ge=0)

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


WanBase = Literal["wan21_14b", "wan22_14b", "wan22_5b"]
Expert = Literal["high_noise", "low_noise"]
EXPERTS: tuple[Expert, ...] = ("high_noise", "low_noise")
# VAE stride times patch size: the multiple each base model's sizes must be (Wan 2.1's VAE, used by both 14B
# models, downsamples 8x; Wan 2.2's, used by the 5B, 16x; every transformer patches 2x2).
BASE_SIZE_MULTIPLE: dict[str, int] = {"wan21_14b": 16, "wan22_14b": 16, "wan22_5b": 32}
BASE_NAMES: dict[str, str] = {
    "wan21_14b": "Wan 2.1 14B",
    "wan22_14b": "Wan 2.2 T2V-A14B",
    "wan22_5b": "Wan 2.2 TI2V-5B",
}


class TrainConfig(Stage):
    """The training spec: one character LoRA on a Wan transformer, the same for every backend (our trainer
    locally or on a pod, AI Toolkit on a pod). `base` must be the architecture of the profile's video model."""

    base: WanBase = "wan22_5b"
    # Wan 2.2 T2V-A14B only: which experts to train, each on its own timestep range (split at `boundary_ratio`).
    experts: tuple[Expert, ...] = EXPERTS
    boundary_ratio: float = Field(default=0.875, gt=0, lt=1)
    # AI Toolkit trains one A14B expert at a time, switching every this many steps.
    switch_boundary_every: int = Field(default=10, gt=0)
    # The largest training resolution (long side, px); `buckets` adds smaller ones, as AI Toolkit's resolution list.
    size: int = Field(gt=0)
    buckets: tuple[int, ...] = ()
    steps: int = Field(gt=0)
    # Above `steps` is fine: the final step always saves a checkpoint.
    checkpoint_every: int = Field(default=500, gt=0)
    # Sample images for choosing the best checkpoint; None: at every checkpoint.
    sample_every: int | None = Field(default=None, gt=0)
    sample_prompts: tuple[PromptTemplate, ...] = (
        "{trigger}, a portrait photo, looking at the camera, soft window light",
        "{trigger}, a full body photo, standing in a park, natural light",
    )
    sample_steps: int = Field(default=20, gt=0)
    sample_guidance_scale: float = Field(default=4.0, ge=0.0)
    rank: int = Field(gt=0)
    # None: alpha = rank (scale 1), as AI Toolkit's Wan examples.
    alpha: float | None = Field(default=None, gt=0)
    learning_rate: float = Field(gt=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    # Drop a caption this often (train on an empty prompt), so the character also appears without its words.
    caption_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # Weight the loss by the dataset's face masks (AI Toolkit's mask_path).
    masks: bool = True
    gradient_checkpointing: bool = True
    # AI Toolkit: offload what it can and quantise the transformer to fit a 24 GB GPU.
    low_vram: bool = False
    quantize: bool = False
    seed: Seed = 0

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every training resolution, largest first."""
        return tuple(sorted({self.size, *self.buckets}, reverse=True))

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    @property
    def sample_interval(self) -> int:
        return self.sample_every or self.checkpoint_every

    @property
    def checkpoint_count(self) -> int:
        """How many checkpoints training saves: one every `checkpoint_every` steps, and one at the end."""
        return math.ceil(self.steps / self.checkpoint_every)

    @property
    def trained_experts(self) -> tuple[Expert, ...]:
        """The experts a LoRA is trained on: both named ones for the A14B, the one transformer otherwise."""
        return self.experts if self.base == "wan22_14b" else ("high_noise",)

    @model_validator(mode="after")
    def _fits_the_base_model(self) -> TrainConfig:
        if any(bucket > self.size for bucket in self.buckets):
            raise ValueError(f"buckets {list(self.buckets)} must not exceed size ({self.size}), the largest resolution")
        if not self.experts or len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts must name high_noise and/or low_noise once each, got {list(self.experts)}")
        if self.base != "wan22_14b" and self.experts != EXPERTS:
            raise ValueError(f"experts applies to wan22_14b only; {BASE_NAMES[self.base]} has one transformer")
        if self.sample_every is not None and self.sample_every % self.checkpoint_every:
            raise ValueError(
                f"sample_every ({self.sample_every}) must be a multiple of checkpoint_every ({self.checkpoint_every}): "
                "samples are made of checkpoints"
            )
        if not self.sample_prompts:
            raise ValueError("sample_prompts is empty: the best checkpoint is chosen on samples of these prompts")
        return self

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The per-setting limits, each bucket's size, and the number of checkpoints the run saves."""
        count = self.checkpoint_count
        subject = (
            f"the number of checkpoints of {path}.steps={self.steps} with {path}.checkpoint_every="
            f"{self.checkpoint_every} ({count})"
        )
        problems = super().limit_problems(path, limits) + limits.checkpoints.problems(subject, count)
        for i, bucket in enumerate(self.buckets):
            problems += limits.size.problems(f"{path}.buckets[{i}]={bucket}", bucket)
        # The base model's own multiple, where the profile's limits (written for its video model) do not say it: a
        # size off the profile's multiple is reported once, by the limit above.
        base = Multiple(
            of=BASE_SIZE_MULTIPLE[self.base], why=f"as {BASE_NAMES[self.base]} needs (VAE stride x 2x2 patch)"
        )
        profile_step = limits.size.multiple
        for name, size in [("size", self.size), *((f"buckets[{i}]", b) for i, b in enumerate(self.buckets))]:
            off_base = base.problem(f"{path}.{name}={size} (train.base={self.base})", size)
            if off_base and not (profile_step and size % profile_step.of):
                problems.append(off_base)
        return problems


GpuCloud = Literal["SECURE", "COMMUNITY", "ALL"]
# Where the LoRA trains: this machine, our trainer on a RunPod pod, AI Toolkit on a RunPod pod.
Backend = Literal["local", "runpod-aitoolkit", "runpod-native"]
BACKENDS: tuple[Backend, ...] = ("local", "runpod-aitoolkit", "runpod-native")


class PodConfig(Frozen):
    """The RunPod pod a `runpod-*` backend trains on: GPU types in order of preference, cloud, image, disk, limits."""

    # Tried in order; the first with capacity is taken. Names as RunPod's API gives them (`gpuTypes { id }`).
    gpu_types: tuple[str, ...] = ("NVIDIA GeForce RTX 5090", "NVIDIA RTX 6000 Ada Generation", "NVIDIA H100 80GB HBM3")
    cloud_type: GpuCloud = "SECURE"
    # None: the backend's image (our worker image for runpod-native, ostris/aitoolkit for runpod-aitoolkit).
    image: str | None = None
    container_disk_gb: int = Field(default=100, gt=0)
    # A pod older than this is terminated by the sweeper, whatever its job says.
    ttl_hours: float = Field(default=6.0, gt=0)
    # A pod lost mid-training is replaced this many times, resuming from the last uploaded checkpoint.
    max_replacements: int = Field(default=2, ge=0)
    poll_seconds: float = Field(default=10.0, gt=0)
    # A pod that has not reported progress for this long is taken as lost.
    silent_after_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _some_gpu(self) -> PodConfig:
        if not self.gpu_types:
            raise ValueError("gpu_types is empty: name at least one RunPod GPU type")
        return self


class RenderConfig(Stage):
    """Wan text-to-image (one frame) and text-to-video renders with the character LoRA.

    Prompts are templates: `{trigger}` becomes the trigger word, `{{` and `}}` are literal braces.
    """

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    # A video is more than one frame, and Wan's frame counts are 4k+1: 5 is the shortest.
    video_frames: int = Field(ge=5)
    fps: int = Field(gt=0)
    guidance_scale: float = Field(ge=0.0)
    seed: Seed = 0
    # 0 renders the base model (a comparison); a negative scale would steer away from the character.
    lora_scale: float = Field(default=1.0, ge=0.0)
    # The strength of the video model's step-distillation LoRAs (the profile's `speed_loras`), where it has them.
    speed_lora_scale: float = Field(default=1.0, ge=0.0)
    # A post FX preset (`likeness.media.post_fx.PRESETS`) applied to every image and every frame of a video.
    fx: str = "none"
    # Videos upscaled to this long side in temporal chunks and tiles (3840: 4K), beside the render; None: not.
    upscale_long_side: int | None = Field(default=None, gt=0)
    # The bound on the upscale's working memory: chunks and tiles shrink to stay under it.
    upscale_memory_mb: int = Field(default=4096, gt=0)
    image_prompts: tuple[PromptTemplate, ...] = (
        "{trigger}, a candid photo in a sunlit cafe, natural skin texture, 35mm",
    )
    video_prompts: tuple[PromptTemplate, ...] = (
        "{trigger} turns towards the camera and smiles, handheld, soft daylight",
    )
    negative_prompt: str = "blurry, deformed, plastic skin, extra fingers, watermark"

    @model_validator(mode="after")
    def _wan_frame_count(self) -> RenderConfig:
        if (self.video_frames - 1) % 4:
            raise ValueError(f"video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81), got {self.video_frames}")
        return self

    @model_validator(mode="after")
    def _known_fx(self) -> RenderConfig:
        from likeness.media.post_fx import post_fx_preset

        post_fx_preset(self.fx)
        return self

    @model_validator(mode="after")
    def _something_to_render(self) -> RenderConfig:
        if not self.image_prompts and not self.video_prompts:
            raise ValueError("image_prompts and video_prompts are both empty: give at least one prompt")
        return self

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The per-setting limits, and the length of every prompt the text encoder reads."""
        prompts = [
            (f"{path}.{kind}[{i}]", p)
            for kind in ("image_prompts", "video_prompts")
            for i, p in enumerate(getattr(self, kind))
        ]
        prompts.append((f"{path}.negative_prompt", self.negative_prompt))
        problems = super().limit_problems(path, limits)
        for where, prompt in prompts:
            problems += limits.prompt_chars.problems(f"the length of {where} ({len(prompt)} characters)", len(prompt))
        return problems


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


def check_shot_count(count: int, limits: Limits, beyond_limits: bool = False) -> None:
    """Refuse a dataset of more shots than the profile's limit (soft limits pass with `beyond_limits`)."""
    problems = limits.dataset.variations.problems(f"the number of dataset shots ({count})", count)
    problems = [p for p in problems if not (p.soft and beyond_limits)]
    if problems:
        raise InvalidSettings([f"{p.text}; {SOFT_ADVICE}" if p.soft else p.text for p in problems])
    if count == 0:
        raise InvalidSettings(["the catalogue and variations give no shots: choose at least one variation"])


class ModelProfile(Frozen):
    """The model behind each role, the stage defaults that suit them, and their limits. Data, not code paths."""

    name: str
    description: str
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16", "float16"]
    # "model": diffusers model CPU offload, so only the component at work holds GPU memory (the
    # production models together are far larger than one GPU); "sequential": layer by layer, for the
    # smallest GPUs, at many times the time; "none": everything on `device`.
    offload: Literal["none", "model", "sequential"] = "none"
    # Decode (and encode) images and videos in overlapping tiles, and a batch one item at a time: VAE memory
    # bounded at a small cost in time.
    vae_tiling: bool = False
    vae_slicing: bool = False
    models: dict[Role, ModelSpec]
    limits: Limits = Limits()
    dataset: DatasetDefaults = DatasetDefaults()
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig
    train: TrainConfig
    render: RenderConfig

    def output_identity(self) -> dict[str, Any]:
        """What of the profile decides outputs: the models behind each role and the precision (not the
        name, description or device)."""
        # VAE tiling blends tiles where it decodes whole: a little different, so only where it is on.
        tiling = {"vae_tiling": True} if self.vae_tiling else {}
        return {"models": self.model_dump(mode="json")["models"], "dtype": self.dtype, **tiling}

    @model_validator(mode="after")
    def _every_role(self) -> ModelProfile:
        missing = [role for role in ROLES if role not in self.models]
        if missing:
            raise ValueError(f"profile {self.name!r} names no model for: {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ModelProfile:
        problems = [
            *self.edit.limit_problems("edit", self.limits.edit),
            *self.upscale.limit_problems("upscale", self.limits.upscale),
            *self.caption.limit_problems("caption", self.limits.caption),
            *self.train.limit_problems("train", self.limits.train),
            *self.render.limit_problems("render", self.limits.render),
        ]
        if problems:
            advice = "; a profile's defaults must be within its own limits"
            raise ValueError("\n".join(f"profile {self.name!r}: {p.text}{advice if p.soft else ''}" for p in problems))
        return self


class RunConfig(Frozen):
    """Everything one character run needs besides the name, the photo and the profile."""

    dataset: DatasetConfig
    train: TrainConfig
    render: RenderConfig
    pod: PodConfig = PodConfig()

    @classmethod
    def from_profile(
        cls, profile: ModelProfile, overrides: dict[str, Any] | None = None, beyond_limits: bool = False
    ) -> RunConfig:
        """The profile's defaults with `overrides` (e.g. {"render": {"seed": 3}}) on top, within its limits."""
        # `beyond_limits` lets settings past soft limits through; hard limits and malformed values never pass.
        defaults = {
            "dataset": {
                **profile.dataset.model_dump(mode="json"),
                "edit": profile.edit.model_dump(),
                "upscale": profile.upscale.model_dump(),
                "caption": profile.caption.model_dump(),
            },
            "train": profile.train.model_dump(),
            "render": profile.render.model_dump(),
        }
        try:
            config = cls.model_validate(merge_nested(defaults, overrides or {}))
        except ValidationError as exc:
            raise InvalidSettings.from_validation_error(exc) from None
        problems = [p for p in config.limit_problems(profile.limits) if not (p.soft and beyond_limits)]
        sigmas = profile.models["video"].speed_sigmas
        said = any(problem.text.startswith("render.steps=") for problem in problems)
        if sigmas and config.render.steps != len(sigmas) and not said:
            problems.append(
                Problem(
                    f"render.steps={config.render.steps}: the video model's speed LoRAs are distilled for exactly "
                    f"{len(sigmas)} steps; use a profile without them for other step counts",
                    soft=False,
                )
            )
        if problems:
            raise InvalidSettings([f"{p.text}; {SOFT_ADVICE}" if p.soft else p.text for p in problems])
        return config

    def limit_problems(self, limits: Limits) -> list[Problem]:
        """How every setting of the run goes past `limits`, soft and hard."""
        return [
            *self.dataset.edit.limit_problems("dataset.edit", limits.edit),
            *self.dataset.upscale.limit_problems("dataset.upscale", limits.upscale),
            *self.dataset.caption.limit_problems("dataset.caption", limits.caption),
            *self.train.limit_problems("train", limits.train),
            *self.render.limit_problems("render", limits.render),
        ]


def merge_nested(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` on top of `base`, mapping into mapping key by key; any other value replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_nested(merged[key], value)
        else:
            merged[key] = value
    return merged

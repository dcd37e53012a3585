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

from likeness.catalogue import CATALOGUE
from likeness.inputs import InvalidInput

Role = Literal["editor", "refiner", "upscaler", "captioner", "video"]
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
        if self.multiple and value % self.multiple.of:
            below = int(value) // self.multiple.of * self.multiple.of
            nearest = f"{below} or {below + self.multiple.of}" if below else str(self.multiple.of)
            found.append(
                Problem(
                    f"{subject} is not a multiple of {self.multiple.of}, {self.multiple.why}; use {nearest}", soft=False
                )
            )
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


# The defaults are the limits of the models the production and permissive profiles use: Qwen-Image-Edit-2509,
# FLUX.1 (dev or schnell), BLIP large and Wan 2.2 TI2V-5B. A profile for other models states its own.


class EditLimits(Frozen):
    """Qwen-Image-Edit-2509."""

    size: Limit = _soft(
        2048,
        "the largest size Qwen-Image-Edit makes sensibly (it was trained up to 1328 px)",
        # diffusers silently rounds other sizes down, and every later stage would get the wrong size.
        Multiple(of=16, why="as Qwen-Image's VAE downsamples 8x and its transformer packs 2x2 latent patches"),
    )
    # 40 steps at true CFG 4 is the model's recommended setting; more only costs time (two 20B passes a step).
    steps: Limit = _soft(100, "2.5 times the 40 steps Qwen-Image-Edit is run at")
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


class CaptionLimits(Frozen):
    """BLIP large (Salesforce/blip-image-captioning-large)."""

    # Measured on the tiny BLIP: the decoder fits positions - 3 new tokens after the 4-token prompt "a photo of".
    max_new_tokens: Limit = _hard(
        509, 'what the 512 positions of BLIP\'s text decoder leave after the prompt "a photo of"'
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
    # UMT5 averages about 4 characters a token in English: 1024 characters leave room for denser text.
    prompt_chars: Limit = _soft(1024, "a proxy for the 512 tokens Wan's UMT5 text encoder reads (it drops the rest)")


class DatasetLimits(Frozen):
    """The variations of the reference."""

    # Each variation is an edit, a refine and a caption: minutes on one GPU.
    variations: Limit = _soft(32, "more than the 10-30 images a character LoRA trains on")


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


class ModelSpec(Frozen):
    """Where one role's weights come from: a hub repo id, a local folder, or `tiny:<role>`."""

    source: str
    file: str | None = None
    revision: str | None = None
    licence: str


class EditConfig(Stage):
    """Qwen-Image-Edit settings for the variation stage."""

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    # True CFG below 1 would push away from the prompt; 1 turns it off.
    true_cfg_scale: float = Field(ge=1.0)
    # The pipeline rounds condition images to multiples of 32 px: a smaller area rounds to nothing.
    condition_area: int = Field(ge=32 * 32)
    vl_condition_area: int = Field(ge=32 * 32)


class UpscaleConfig(Stage):
    """ESRGAN 4x, resize to `size`, then a Flux img2img refine that starts at `start_step` of `steps`."""

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    start_step: int = Field(ge=0)
    guidance_scale: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _start_inside_schedule(self) -> UpscaleConfig:
        if self.start_step >= self.steps:
            raise ValueError(
                f"start_step ({self.start_step}) must be below steps ({self.steps}): "
                "the refine has to run at least one step"
            )
        return self

    @property
    def strength(self) -> float:
        """Flux img2img denoises the last `steps - start_step` of `steps` steps."""
        return (self.steps - self.start_step) / self.steps


class CaptionConfig(Stage):
    max_new_tokens: int = Field(gt=0)


class TrainConfig(Stage):
    """LoRA on the video model's transformer (peft), flow-matching loss on the dataset's latents."""

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    # Above `steps` is fine: the final step always saves a checkpoint.
    checkpoint_every: int = Field(gt=0)
    rank: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    seed: Seed = 0

    @property
    def checkpoint_count(self) -> int:
        """How many checkpoints training saves: one every `checkpoint_every` steps, and one at the end."""
        return math.ceil(self.steps / self.checkpoint_every)

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The per-setting limits, and the number of checkpoints the run saves."""
        count = self.checkpoint_count
        subject = (
            f"the number of checkpoints of {path}.steps={self.steps} with {path}.checkpoint_every="
            f"{self.checkpoint_every} ({count})"
        )
        return super().limit_problems(path, limits) + limits.checkpoints.problems(subject, count)


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
    """What the dataset stage makes: which variations of the reference, and how they are refined."""

    variations: tuple[str, ...] = ("front", "side", "back", "smile", "surprised", "closeup")
    seed: Seed = 0
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig

    @model_validator(mode="after")
    def _known_variations(self) -> DatasetConfig:
        if not self.variations:
            raise ValueError("the dataset needs at least one variation")
        unknown = [v for v in self.variations if v not in CATALOGUE]
        if unknown:
            raise ValueError(f"unknown variation {unknown[0]!r}; known: {', '.join(CATALOGUE)}")
        if len(set(self.variations)) != len(self.variations):
            raise ValueError(f"variations repeat: {', '.join(self.variations)}")
        return self

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The number of variations (the stages inside have limits of their own)."""
        subject = f"the number of {path}.variations ({len(self.variations)})"
        return super().limit_problems(path, limits) + limits.variations.problems(subject, len(self.variations))


class ModelProfile(Frozen):
    """The model behind each role, the stage defaults that suit them, and their limits. Data, not code paths."""

    name: str
    description: str
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16", "float16"]
    # "model": diffusers model CPU offload, so only the component at work holds GPU memory (the
    # production models together are far larger than one GPU); "none": everything on `device`.
    offload: Literal["none", "model"] = "none"
    models: dict[Role, ModelSpec]
    limits: Limits = Limits()
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig
    train: TrainConfig
    render: RenderConfig

    def output_identity(self) -> dict[str, Any]:
        """What of the profile decides outputs: the models behind each role and the precision (not the
        name, description or device)."""
        return {"models": self.model_dump(mode="json")["models"], "dtype": self.dtype}

    @model_validator(mode="after")
    def _every_role(self) -> ModelProfile:
        missing = [role for role in ROLES if role not in self.models]
        if missing:
            raise ValueError(f"profile {self.name!r} names no model for: {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> ModelProfile:
        # The dataset defaults (variations, seed) come from code; a profile's limits must admit them too.
        dataset = DatasetConfig(edit=self.edit, upscale=self.upscale, caption=self.caption)
        problems = [
            *dataset.limit_problems("dataset", self.limits.dataset),
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

    @classmethod
    def from_profile(
        cls, profile: ModelProfile, overrides: dict[str, Any] | None = None, beyond_limits: bool = False
    ) -> RunConfig:
        """The profile's defaults with `overrides` (e.g. {"render": {"seed": 3}}) on top, within its limits."""
        # `beyond_limits` lets settings past soft limits through; hard limits and malformed values never pass.
        defaults = {
            "dataset": {
                "edit": profile.edit.model_dump(),
                "upscale": profile.upscale.model_dump(),
                "caption": profile.caption.model_dump(),
            },
            "train": profile.train.model_dump(),
            "render": profile.render.model_dump(),
        }
        try:
            config = cls.model_validate(_merge(defaults, overrides or {}))
        except ValidationError as exc:
            raise InvalidSettings.from_validation_error(exc) from None
        problems = [p for p in config.limit_problems(profile.limits) if not (p.soft and beyond_limits)]
        if problems:
            raise InvalidSettings([f"{p.text}; {SOFT_ADVICE}" if p.soft else p.text for p in problems])
        return config

    def limit_problems(self, limits: Limits) -> list[Problem]:
        """How every setting of the run goes past `limits`, soft and hard."""
        return [
            *self.dataset.limit_problems("dataset", limits.dataset),
            *self.dataset.edit.limit_problems("dataset.edit", limits.edit),
            *self.dataset.upscale.limit_problems("dataset.upscale", limits.upscale),
            *self.dataset.caption.limit_problems("dataset.caption", limits.caption),
            *self.train.limit_problems("train", limits.train),
            *self.render.limit_problems("render", limits.render),
        ]


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged

"""A model profile (`ModelProfile`): the model behind each role, with its LoRAs, the stage defaults that suit
those models, and their limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from likeness.base import Frozen
from likeness.config.dataset import CaptionConfig, DatasetDefaults, EditConfig, UpscaleConfig
from likeness.config.limits import Limits
from likeness.config.render import RenderConfig
from likeness.config.training import Expert, TrainConfig

Role = Literal["editor", "refiner", "upscaler", "captioner", "video", "animator"]
# How a role's pipeline holds GPU memory. "none": every component resident, loaded once and kept through the stage;
# "model": diffusers' model CPU offload, one component on the GPU at a time, moved in at every pipeline call;
# "sequential": layer by layer, for the smallest GPUs, at many times the time; "auto": the first of those three
# that fits the GPU the stage runs on, by the estimate's counts of weights and activations (likeness.run.memory).
Offload = Literal["auto", "none", "model", "sequential"]
# The roles whose weights can be `fp8-matmul`: their LoRAs are fused into the weights when they load, so every call
# runs the same modules, which are compiled. The video models take the character's LoRA and the speed LoRAs as
# adapters at each render (other strengths at each probe pair): each would compile again.
FP8_MATMUL_ROLES: tuple[Role, ...] = ("editor", "refiner")
# Every profile names these; the animator (image-to-video, for `render --animate`) is optional.
ROLES: tuple[Role, ...] = ("editor", "refiner", "upscaler", "captioner", "video")


class LoraSpec(Frozen):
    """A LoRA file fused into a role's model at `scale` (e.g. a step-distillation LoRA); found like a model."""

    source: str
    file: str
    revision: str | None = None
    licence: str
    # 1 is the strength the authors of a distillation LoRA publish; 0 would be no LoRA at all.
    scale: float = Field(default=1.0, gt=0)


class UsoSpec(Frozen):
    """ByteDance USO for a FLUX.1 refiner: its DiT LoRA and SigLIP projector, files of `source` (a hub repo, a local
    folder or `tiny:uso`), and the SigLIP image encoder they were trained with, found like a model. The projector and
    the encoder make style tokens only: None where a run has no style reference."""

    source: str
    revision: str | None = None
    lora: str = "uso_flux_v1.0/dit_lora.safetensors"
    projector: str | None = "uso_flux_v1.0/projector.safetensors"
    image_encoder: str | None = "google/siglip-so400m-patch14-384"
    licence: str

    def lora_file(self) -> LoraSpec:
        return LoraSpec(source=self.source, file=self.lora, revision=self.revision, licence=self.licence)

    def projector_file(self) -> LoraSpec | None:
        if self.projector is None:
            return None
        return LoraSpec(source=self.source, file=self.projector, revision=self.revision, licence=self.licence)

    def image_encoder_model(self) -> ModelSpec | None:
        return None if self.image_encoder is None else ModelSpec(source=self.image_encoder, licence=self.licence)


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
    # The video role's step-distillation LoRAs, loaded beside the character LoRA for renders and for our trainer's
    # checkpoint samples (never for its training steps): `high_noise` into `transformer`, `low_noise` into Wan 2.2
    # A14B's `transformer_2`.
    speed_loras: dict[Expert, LoraSpec] = {}
    # The sigmas those LoRAs were distilled on; renders step exactly these, with Euler.
    speed_sigmas: tuple[float, ...] = ()
    # This role's memory mode; None: the profile's `offload`.
    offload: Offload | None = None
    # "fp8": the denoiser's weights (transformer, and transformer_2 of an A14B) stored in float8 e4m3 and cast to the
    # profile's dtype layer by layer as each computes (diffusers' layerwise casting): half the memory, the same
    # arithmetic on rounded weights. "fp8-matmul" (the editor and the refiner, in bfloat16 profiles): the linear layers
    # of the denoiser's blocks multiply in FP8 on GPUs with FP8 tensor cores, the blocks compiled (likeness.models.fp8):
    # half the memory and about half the time of those layers. None: stored in the profile's dtype.
    weights: Literal["fp8", "fp8-matmul"] | None = None
    # The refiner's USO files; a run uses them when its `upscale.uso` is on.
    uso: UsoSpec | None = None

    @model_validator(mode="after")
    def _sigmas_with_speed_loras(self) -> ModelSpec:
        if bool(self.speed_loras) != bool(self.speed_sigmas):
            raise ValueError("speed_loras and speed_sigmas go together: the LoRAs are distilled on those sigmas")
        return self


class ModelProfile(Frozen):
    """The model behind each role, the stage defaults that suit them, and their limits. Data, not code paths."""

    name: str
    description: str
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16", "float16"]
    # Every role's memory mode (Offload) unless the role names its own. On the CPU nothing is offloaded.
    offload: Offload = "auto"
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
        # A memory mode moves weights, not numbers: the same outputs under every one.
        models = self.model_dump(mode="json", exclude={"models": {role: {"offload"} for role in self.models}})
        return {"models": models["models"], "dtype": self.dtype, **tiling}

    def memory_mode(self, role: Role) -> Offload:
        """The memory mode `role` runs in: its own, else the profile's."""
        return self.models[role].offload or self.offload

    def with_memory_modes(self, modes: dict[Role, Offload]) -> ModelProfile:
        """This profile with `modes` as the memory modes of those roles (a stage's choices for its GPU)."""
        models = {
            role: spec.model_copy(update={"offload": modes[role]}) if role in modes else spec
            for role, spec in self.models.items()
        }
        return self.model_copy(update={"models": models})

    def for_upscale(self, upscale: UpscaleConfig) -> ModelProfile:
        """This profile as a run with `upscale` loads it: without the USO files the run does not use (all of them
        with USO off, the style projector and encoder without a style reference), so nothing checks, downloads or
        loads them."""
        uso = self.models["refiner"].uso
        if uso is None or upscale.uso_style:
            return self
        used = uso.model_copy(update={"projector": None, "image_encoder": None}) if upscale.uso else None
        refiner = self.models["refiner"].model_copy(update={"uso": used})
        return self.model_copy(update={"models": {**self.models, "refiner": refiner}})

    @model_validator(mode="after")
    def _every_role(self) -> ModelProfile:
        missing = [role for role in ROLES if role not in self.models]
        if missing:
            raise ValueError(f"profile {self.name!r} names no model for: {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _uso_on_the_refiner(self) -> ModelProfile:
        elsewhere = [role for role, spec in self.models.items() if spec.uso and role != "refiner"]
        if elsewhere:
            raise ValueError(f"profile {self.name!r}: USO conditions the refiner only, not the {elsewhere[0]}")
        uso = self.models["refiner"].uso
        if self.upscale.uso and not uso:
            raise ValueError(f"profile {self.name!r}: upscale.uso is on but its refiner names no USO files")
        if self.upscale.uso_style and uso and not (uso.projector and uso.image_encoder):
            raise ValueError(f"profile {self.name!r}: upscale.uso_style needs its USO's projector and image_encoder")
        return self

    @model_validator(mode="after")
    def _fp8_matmuls_where_they_work(self) -> ModelProfile:
        for role, spec in self.models.items():
            if spec.weights != "fp8-matmul":
                continue
            if role not in FP8_MATMUL_ROLES:
                raise ValueError(
                    f"profile {self.name!r}: the {role} takes its LoRAs as adapters at each call, which FP8 matmuls "
                    f"do not take; weights fp8-matmul is for the {' and the '.join(FP8_MATMUL_ROLES)} (use fp8)"
                )
            if self.dtype != "bfloat16":
                raise ValueError(
                    f"profile {self.name!r}: the {role}'s weights fp8-matmul compute from bfloat16, not {self.dtype}"
                )
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

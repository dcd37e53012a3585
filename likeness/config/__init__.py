"""Typed per-run configuration: model profiles and the knobs of each stage, with defaults and limits.

A model profile names the model behind each role, the stage defaults that suit those models, and the
limits of those models as data (`Limits`), so that a profile for another model states its own. A
run's configuration starts from the profile's defaults, takes the user's overrides, and is checked
against the limits before any work: hard limits are what the model cannot do, soft limits are sane
time and machine bounds a user may pass deliberately (`beyond_limits`). Flows receive the resolved
configuration, so the cache key of a stage sees every value that shapes its output.
"""

from likeness.base import Frozen
from likeness.config.base import (
    HARD_ADVICE,
    PROMPT_PLACEHOLDERS,
    SEED_RANGE,
    SOFT_ADVICE,
    InvalidSettings,
    PromptTemplate,
    Seed,
    render_template,
    template_problem,
)
from likeness.config.dataset import CaptionConfig, DatasetConfig, DatasetDefaults, EditConfig, UpscaleConfig
from likeness.config.limits import (
    CaptionLimits,
    Ceiling,
    DatasetLimits,
    EditLimits,
    Limit,
    Limits,
    Multiple,
    Problem,
    RenderLimits,
    Stage,
    TrainLimits,
    UpscaleLimits,
    check_shot_count,
)
from likeness.config.pod import BACKENDS, Backend, GpuCloud, PodConfig
from likeness.config.profile import FP8_MATMUL_ROLES, ROLES, LoraSpec, ModelProfile, ModelSpec, Offload, Role, UsoSpec
from likeness.config.render import RenderConfig, StrengthProbe
from likeness.config.run import RunConfig, merge_nested
from likeness.config.training import (
    BASE_NAMES,
    BASE_SIZE_MULTIPLE,
    EXPERTS,
    Expert,
    StopWhenFlat,
    TrainConfig,
    WanBase,
    check_stop_when_flat,
)

__all__ = [
    "Frozen",
    "PROMPT_PLACEHOLDERS",
    "SEED_RANGE",
    "SOFT_ADVICE",
    "HARD_ADVICE",
    "InvalidSettings",
    "template_problem",
    "render_template",
    "PromptTemplate",
    "Seed",
    "Problem",
    "Ceiling",
    "Multiple",
    "Limit",
    "EditLimits",
    "UpscaleLimits",
    "CaptionLimits",
    "TrainLimits",
    "RenderLimits",
    "DatasetLimits",
    "Limits",
    "Stage",
    "check_shot_count",
    "EditConfig",
    "UpscaleConfig",
    "CaptionConfig",
    "DatasetConfig",
    "DatasetDefaults",
    "WanBase",
    "Expert",
    "EXPERTS",
    "BASE_SIZE_MULTIPLE",
    "BASE_NAMES",
    "TrainConfig",
    "StopWhenFlat",
    "check_stop_when_flat",
    "RenderConfig",
    "StrengthProbe",
    "GpuCloud",
    "Backend",
    "BACKENDS",
    "PodConfig",
    "Role",
    "ROLES",
    "FP8_MATMUL_ROLES",
    "LoraSpec",
    "UsoSpec",
    "ModelSpec",
    "ModelProfile",
    "Offload",
    "RunConfig",
    "merge_nested",
]

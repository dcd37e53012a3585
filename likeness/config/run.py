"""A run's configuration (`RunConfig`): the profile's defaults with the user's overrides, checked against its
limits."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from likeness.base import Frozen
from likeness.config.base import SOFT_ADVICE, InvalidSettings
from likeness.config.dataset import DatasetConfig
from likeness.config.limits import Limits, Problem
from likeness.config.pod import PodConfig
from likeness.config.profile import ModelProfile
from likeness.config.render import RenderConfig
from likeness.config.training import TrainConfig


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
        if config.dataset.upscale.uso and not profile.models["refiner"].uso:
            problems.append(
                Problem(
                    f"dataset.upscale.uso=true: profile {profile.name!r} names no USO files for its refiner "
                    f"({profile.models['refiner'].source}); USO is a LoRA for FLUX.1-dev refiners",
                    soft=False,
                )
            )
        uso = profile.models["refiner"].uso
        if config.dataset.upscale.uso_style and uso and not (uso.projector and uso.image_encoder):
            problems.append(
                Problem(
                    f"dataset.upscale.uso_style=true: profile {profile.name!r} names no USO projector and image "
                    "encoder for the style reference",
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

"""Every setting a stage takes is in its cache key: change any one and the key changes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel

from likeness.models.profiles import load_profile
from likeness.storage.artifacts import ArtifactRef
from tests.records import dataset_item, dataset_ref

TINY = load_profile("tiny")
REF = ArtifactRef(key="sha256/aa/x.png", sha256="a" * 64, size=1)


def changed(value: Any) -> Any:
    """Another valid value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + " more"
    if isinstance(value, tuple):
        return (*value, value[0]) if value else ("x",)
    if value is None:  # the optional numbers (train.alpha, train.sample_every)
        return 6
    if isinstance(value, dict):  # a section of settings as dumped (render.probe): its first setting changed
        name = next(iter(value))
        return {**value, name: changed(value[name])}
    if isinstance(value, BaseModel):
        name = next(iter(type(value).model_fields))
        return value.model_copy(update={name: changed(getattr(value, name))})
    raise TypeError(f"no changed() for {type(value).__name__}")


def key_of(task: Any, parameters: dict[str, Any]) -> str:
    # No result store: no cached record to check, only the key is computed.
    context = SimpleNamespace(task=task, result_store=None)
    return task.cache_policy.compute_key(task_ctx=context, inputs=parameters, flow_parameters={})


def stage_cases() -> list[tuple[str, Any, dict[str, Any], str]]:
    from tasks.caption import caption_image
    from tasks.render import render_media
    from tasks.train import fit_lora
    from tasks.upscale import upscale_image
    from tasks.variations import edit_variation

    dataset = dataset_ref(REF, (dataset_item("front", REF, "Ada, front"),)).training_set()
    return [
        (
            "edit",
            edit_variation,
            {
                "images": (REF,),
                "prompt": "p",
                "width": 64,
                "height": 64,
                "config": TINY.edit,
                "seed": 0,
                "filename": "f",
            },
            "config",
        ),
        (
            "upscale",
            upscale_image,
            {"image": REF, "config": TINY.upscale, "prompt": "p", "seed": 0, "reference": (0.1, 0.2)},
            "config",
        ),
        (
            "caption",
            caption_image,
            {"image": REF, "trigger": "Ada", "tags": ("front view", "full body"), "config": TINY.caption},
            "config",
        ),
        ("train", fit_lora, {"dataset": dataset, "config": TINY.train}, "config"),
        (
            "render",
            render_media,
            {"lora": REF, "kind": "image", "prompt": "p", "config": TINY.render, "seed": 0},
            "config",
        ),
    ]


CASES = stage_cases()


@pytest.mark.parametrize(("name", "task", "parameters", "field"), CASES, ids=[case[0] for case in CASES])
def test_every_config_field_and_parameter_changes_the_stage_cache_key(likeness_env, name, task, parameters, field):
    parameters = {**parameters, "profile": TINY}
    base = key_of(task, parameters)
    config: BaseModel = parameters[field]
    for setting, value in config.model_dump().items():
        variant = config.model_copy(update={setting: changed(value)})
        assert key_of(task, {**parameters, field: variant}) != base, f"{name}: {setting}"
    for parameter, value in parameters.items():
        if parameter in (field, "profile") or isinstance(value, BaseModel):
            continue
        assert key_of(task, {**parameters, parameter: changed(value)}) != base, f"{name}: {parameter}"
    other_models = TINY.model_copy(update={"dtype": "bfloat16"})
    assert key_of(task, {**parameters, "profile": other_models}) != base, f"{name}: profile"


@pytest.mark.parametrize(("name", "task", "parameters", "field"), CASES, ids=[case[0] for case in CASES])
def test_every_declared_config_field_is_in_the_stage_cache_key(likeness_env, name, task, parameters, field):
    # The fields the model declares, not those its dump holds: a field left out of the dump is in neither.
    parameters = {**parameters, "profile": TINY}
    base = key_of(task, parameters)
    config: BaseModel = parameters[field]
    for setting in type(config).model_fields:
        variant = config.model_copy(update={setting: changed(getattr(config, setting))})
        assert key_of(task, {**parameters, field: variant}) != base, f"{name}: {setting} is not in the cache key"


def test_a_render_setting_changes_only_the_render_stage_key(likeness_env):
    # The fast twin of the end-to-end claim that `--set render.seed=7` re-runs only rendering: every stage before
    # it takes its settings from the run's config exactly as produce hands them over, and keeps its key.
    from likeness.config import RunConfig

    def stage_keys(run: RunConfig) -> dict[str, str]:
        sections = {"edit": run.dataset.edit, "upscale": run.dataset.upscale, "caption": run.dataset.caption}
        sections |= {"train": run.train, "render": run.render}
        return {
            name: key_of(task, {**parameters, field: sections[name], "profile": TINY})
            for name, task, parameters, field in CASES
        }

    run = RunConfig.from_profile(TINY)
    base = stage_keys(run)
    for setting in type(run.render).model_fields:
        render = run.render.model_copy(update={setting: changed(getattr(run.render, setting))})
        keys = stage_keys(run.model_copy(update={"render": render}))
        assert keys.pop("render") != base["render"], setting
        assert keys == {name: key for name, key in base.items() if name != "render"}, setting

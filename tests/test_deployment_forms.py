"""The deployments' run forms, which Prefect builds from each flow's typed parameters and their docstrings: typed,
described fields (a free-form object only where any setting may go), and the render form's fields doing what
`likeness render`'s options do."""

from __future__ import annotations

import io
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# The parameters that may take an object of any keys: `overrides` sets any setting by its section and name (the
# settings' own validation checks it at the run's start, naming the setting), which no typed field could list.
FREE_FORM = {"overrides"}
# `likeness render`'s options as the render form's fields, with the JSON type each takes.
RENDER_FIELDS = {
    "images": "integer",
    "videos": "integer",
    "prompts": "array",
    "frames": "integer",
    "fx": "string",
    "upscale": "string",
    "seed": "integer",
    "animate": "string",
    "animate_prompt": "string",
}


@cache
def forms() -> dict[str, dict[str, Any]]:
    """Each deployment of prefect.yaml -> its flow's parameter schema, as the server stores it for the form."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {
        deployment["name"]: parameter_schema(
            load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        ).model_dump_for_openapi()
        for deployment in config["deployments"]
    }


def free_form(node: dict[str, Any], definitions: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    """Whether a schema takes anything somewhere: any value (no type), or an object of any keys."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return name not in seen and free_form(definitions[name], definitions, seen | {name})
    alternatives = [sub for key in ("anyOf", "oneOf", "allOf") for sub in node.get(key, [])]
    if alternatives:
        return any(free_form(sub, definitions, seen) for sub in alternatives)
    kind = node.get("type")
    if kind is None and "enum" not in node and "const" not in node:
        return True
    if kind == "array":
        return free_form(node.get("items", {}), definitions, seen)
    if kind == "object":
        # Keys of any name are free-form where their values are (dict[str, Any]), not where they are typed.
        extra = node.get("additionalProperties", True)
        if extra is True or isinstance(extra, dict) and free_form(extra, definitions, seen):
            return True
        return any(free_form(sub, definitions, seen) for sub in node.get("properties", {}).values())
    return False


def test_no_form_field_is_a_free_form_object_where_a_typed_field_can_serve():
    found = {
        (deployment, name)
        for deployment, schema in forms().items()
        for name, field in schema["properties"].items()
        if free_form(field, schema.get("definitions", {}))
    }
    assert found and {name for _, name in found} <= FREE_FORM, found
    # The check sees a free-form field: `overrides` is one, where a deployment has it.
    assert ("render", "overrides") in found


def test_every_form_field_says_what_it_is():
    undescribed = {
        (deployment, name)
        for deployment, schema in forms().items()
        for name, field in schema["properties"].items()
        if not field.get("description", "").strip()
    }
    assert not undescribed, undescribed


def test_the_render_form_has_the_typed_fields_of_likeness_render():
    from likeness.media.post_fx import PRESETS
    from likeness.render.requests import UPSCALE_SIZES

    fields = forms()["render"]["properties"]
    assert RENDER_FIELDS.keys() <= fields.keys()
    typed = {}
    for name in RENDER_FIELDS:
        # Each is optional: left empty, the profile's settings (or `overrides`) hold.
        field, nothing = fields[name]["anyOf"]
        assert nothing == {"type": "null"} and fields[name]["default"] is None, name
        typed[name] = field
    assert {name: field["type"] for name, field in typed.items()} == RENDER_FIELDS
    assert typed["prompts"]["items"] == {"type": "string"}
    assert typed["fx"]["enum"] == list(PRESETS)
    assert typed["upscale"]["enum"] == list(UPSCALE_SIZES) == ["4k", "1440p", "1080p"]
    assert typed["frames"]["minimum"] == 5 and typed["images"]["minimum"] == typed["videos"]["minimum"] == 0
    assert (typed["seed"]["minimum"], typed["seed"]["exclusiveMaximum"]) == (0, 2**32)
    assert "s3://" in fields["animate"]["description"] and "{trigger}" in fields["prompts"]["description"]
    assert "render.video_frames" in fields["frames"]["description"]
    # The typed fields come after name, lora_run and profile and before `overrides` (a JSON editor in the form).
    order = sorted(fields, key=lambda name: fields[name]["position"])
    assert order[:3] == ["name", "lora_run", "profile"] and order[-2:] == ["overrides", "beyond_limits"]


def test_an_option_and_its_field_set_the_same_settings():
    from likeness.render.requests import with_render_options

    given = {"render": {"steps": 8, "fx": "none"}, "train": {"steps": 5}}
    settings = with_render_options(given, frames=41, fx="seed-look", upscale="1440p", seed=3, prefix="")
    assert settings == {
        "render": {"steps": 8, "fx": "seed-look", "video_frames": 41, "upscale_long_side": 2560, "seed": 3},
        "train": {"steps": 5},
    }
    assert given["render"] == {"steps": 8, "fx": "none"}  # the form's overrides are not changed
    assert with_render_options(given, 41, "seed-look", "1440p", 3) == settings  # as `likeness render` calls it
    assert with_render_options(None) == {"render": {}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"frames": 8}, "frames 8: video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81)"),
        ({"fx": "sepia"}, "fx: unknown post FX preset 'sepia'; known presets: none, seed-look"),
        ({"upscale": "8k"}, "upscale '8k' is not one of 4k, 1440p, 1080p"),
        ({"upscale": "4k"}, "render.upscale_long_side=3840 is above 512"),
        ({"seed": -1}, "seed -1: a seed is 0 to 4294967295"),
        ({"prompts": ["Ada runs"], "images": 2}, "give prompts or images/videos, not both"),
        ({"prompts": ["Ada runs", " "]}, "prompts: prompt 2 is empty"),
        ({"prompts": ["Ada\x07runs"]}, "prompts: prompt 1 holds the control character U+0007"),
        ({"prompts": ["{trigger} at {place}"]}, "prompt 1 ('{trigger} at {place}'): "),
        ({"frames": 41, "overrides": {"render": 3}}, "the settings' render is 3, not a mapping"),
        ({"animate": "still.png"}, "animate needs an image-to-video model, and profile 'tiny' names none"),
        ({"animate_prompt": "Ada waves"}, "animate_prompt is the video prompt of a still to animate: give the still"),
        ({"animate": "s.png", "profile": "tiny-a14b", "animate_prompt": "{who} waves"}, "unknown placeholder {who}"),
    ],
)
def test_a_field_no_render_can_take_is_refused_at_the_start_naming_it(likeness_env, fields, message):
    from flows.stages import render_character
    from likeness.inputs import InvalidInput

    # Refused before the run before is looked up: no Prefect server, no model.
    with pytest.raises(InvalidInput) as refused:
        render_character.fn("Ada", "no-such-run", **fields)
    assert message in str(refused.value)


def test_a_render_run_from_the_form_renders_what_its_fields_ask(likeness_env, prefect_api, face_photo, tmp_path):
    from prefect import flow
    from prefect.exceptions import ParameterTypeError
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from flows.stages import render_character
    from likeness.models.profiles import load_profile
    from likeness.records import CharacterResult
    from likeness.render.prompts import video_prompt
    from likeness.render.requests import read_still, still_prompt
    from likeness.storage.artifacts import get_bytes, load_image, put_file, put_image
    from tasks.train import fit_lora
    from tests.records import dataset_item, dataset_ref

    tiny = load_profile("tiny")
    reference = put_file(face_photo)
    images = [load_image(reference).rotate(angle).resize((64, 64)) for angle in (0, 90)]
    items = tuple(
        dataset_item(shot, put_image(image, f"{shot}.png"), f"Ada, {shot}")
        for shot, image in zip(("front", "side"), images, strict=True)
    )
    dataset = dataset_ref(reference, items)
    # A training run as cheap as one: a one-step LoRA, the result a train-character run persists.
    lora = fit_lora.fn(dataset.training_set(), tiny.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), tiny)

    @flow(name="train-character", persist_result=True, result_serializer="json")
    def trained() -> CharacterResult:
        return CharacterResult(dataset=dataset, lora=lora)

    no_probe = {"render": {"probe": {"enabled": False}}}
    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        lora_run = str(trained(return_state=True).state_details.flow_run_id)
        varied = render_character(
            "Ada", lora_run, images=2, videos=1, frames=9, fx="seed-look", seed=5, overrides=no_probe
        )
        listed = render_character(
            "Ada", lora_run, prompts=["{trigger} reading in a library", "{trigger} on a ferry"], overrides=no_probe
        )
        # A value off the form's choices is refused by Prefect before the flow starts, naming the field.
        with pytest.raises(ParameterTypeError, match="fx"):
            render_character("Ada", lora_run, fx="sepia")

    renders = varied.renders
    assert sorted(item.kind for item in renders) == ["image", "image", "video"]
    assert all((item.fx, item.seed) == ("seed-look", 5) for item in renders)
    assert [item.frames for item in renders if item.kind == "video"] == [9]
    assert all(item.prompt.startswith("Ada") for item in renders)
    # The lineage each render carries says so too.
    image = next(item for item in renders if item.kind == "image")
    with Image.open(io.BytesIO(get_bytes(image.output))) as png:
        lineage = json.loads(png.info["likeness"])
    assert (lineage["fx"], lineage["seed"], lineage["prompt"]) == ("seed-look", 5, image.prompt)
    assert varied.lora == lora and varied.dataset == dataset

    assert [(item.kind, item.prompt, item.fx) for item in listed.renders] == [
        ("image", "Ada reading in a library", "none"),
        ("image", "Ada on a ferry", "none"),
    ]

    # A render given as the still to animate, by its key in the store: its own prompt comes to life.
    png, carried = read_still(image.output.key)
    assert carried is not None and png.startswith(b"\x89PNG")
    config = tiny.render.model_copy(update={"seed": 5})
    assert still_prompt(carried, config, "Ada") == video_prompt(image.prompt, 5)

"""The stage flows as they are deployed: what a person knows in (a character, its reference, the run before),
a `CharacterResult` out, persisted in the shared results storage for the next stage and for `likeness pull`.

    dataset = produce_dataset("Ada", "s3://characters/ada.jpg", profile="production")
    lora = train_character("Ada", dataset_run="<flow run id or name of a dataset run>")
    renders = render_character("Ada", lora_run="<flow run id or name of a training run>")
    more = render_character("Ada", lora_run="<the same>", images=2, videos=1, frames=41, fx="seed-look")

Each stage checks its settings and, where it runs the models here, that the profile's weights are on this
machine, before any task starts: a configuration error fails the run once and is never retried.
"""

from __future__ import annotations

import inspect
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field, ValidationError

from flows.dataset import build_dataset
from flows.render import render
from flows.train import train_lora
from likeness.config import SEED_RANGE, Backend, ModelProfile, Role, RunConfig, check_shot_count, render_template
from likeness.dataset.catalogue import (
    MAX_CATALOGUE_FILE_BYTES,
    MAX_CATALOGUE_JSON_BYTES,
    Catalogue,
    check_inputs_used,
    load_catalogue,
)
from likeness.inputs import InvalidInput, normalise_trigger
from likeness.media.post_fx import PRESETS
from likeness.models.profiles import available_profiles, load_profile, preflight
from likeness.records import CharacterResult
from likeness.render.jobs import plan_renders
from likeness.render.prompt_files import PromptEntry
from likeness.render.prompts import CharacterPrompt
from likeness.render.requests import (
    UPSCALE_SIZES,
    check_animator,
    listed_prompts,
    read_still,
    still_prompt,
    with_render_options,
)
from likeness.run.deployed import completed_result
from likeness.run.lease import held, lease_key
from likeness.run.prepare_render import prompt_variations
from likeness.settings import get_settings
from likeness.storage.artifacts import ArtifactRef, get_store, put_bytes
from likeness.storage.locations import read_location
from tasks.inputs import fetch_input_image
from tasks.strength_probe import probe_strengths

F = TypeVar("F")

DATASET_ROLES: tuple[Role, ...] = ("editor", "refiner", "upscaler", "captioner")

# In the Prefect UI's run form: a choice of the built-in profiles (the CLI also passes a profile's YAML path).
ProfileName = Annotated[str, Field(json_schema_extra={"enum": available_profiles()})]
# A run started from a form whose profile its pool's machines cannot run: the field to change.
FORM_ADVICE = (
    "set the run's `profile` field to tiny to run on a CPU worker, or start it from a deployment on a GPU pool "
    "(`likeness deploy --profile` sets the forms' default)"
)

# What the Prefect UI's run form says of the parameters several stages share, filled into the docstrings'
# Args sections (Prefect reads parameter descriptions from there).
SHARED_ARGS = {
    "name": "The character's name; its trigger word in captions and prompts (spaces become '_').",
    "reference": "The photo: a path the worker can read, an s3:// or https:// URL, or a key in the artifact store.",
    "profile": "The models: `tiny` runs on a CPU, `production` on a GPU (`likeness profiles` lists them).",
    "backend": "Where the LoRA trains: on this pool (`local`), or on a RunPod pod with AI Toolkit or our trainer.",
    "overrides": 'Settings that differ from the profile\'s, e.g. {"train": {"steps": 500}}.',
    "beyond_limits": "Allow settings past the profile's safe limits.",
    "garments": "Garment images for the try-on shots, each given as the reference is.",
    "poses": "Pose images for the pose-transfer shots, each given as the reference is.",
    "catalogue": "Shots to add: a YAML catalogue, given as the reference is (none: the default catalogue).",
}


def described(fn: F) -> F:
    """`fn` with each `{parameter}` line of its docstring replaced by that parameter's shared description (a
    placeholder inside a description, `{trigger}`, stays as it is)."""

    def fill(match: re.Match[str]) -> str:
        return f"{match[1]}{match[2]}: {SHARED_ARGS[match[2]]}"

    fn.__doc__ = re.sub(r"^([ \t]*)\{(\w+)\}$", fill, inspect.cleandoc(fn.__doc__ or ""), flags=re.MULTILINE)
    return fn


class DatasetInputs(NamedTuple):
    """A run's parameters, checked and resolved: the profile, the settings and the input images in the store."""

    trigger: str
    profile: ModelProfile
    config: RunConfig
    reference: ArtifactRef
    garments: list[ArtifactRef]
    poses: list[ArtifactRef]
    catalogue: Catalogue
    catalogue_key: str | None

    def build_dataset(self) -> CharacterResult:
        """The dataset flow on these inputs."""
        dataset = build_dataset(
            self.trigger, self.reference, self.config.dataset, self.profile, self.catalogue, self.garments, self.poses
        )
        return CharacterResult(dataset=dataset)

    @contextmanager
    def one_run_at_a_time(self, flow_name: str) -> Iterator[None]:
        """While this flow makes this character from these inputs, another such run stops at once, naming it."""
        work = {
            "flow": flow_name,
            "character": self.trigger,
            "reference": self.reference.sha256,
            "garments": [ref.sha256 for ref in self.garments],
            "poses": [ref.sha256 for ref in self.poses],
            "catalogue": self.catalogue.model_dump(mode="json"),
            "profile": {"name": self.profile.name, **self.profile.output_identity()},
            "config": self.config.model_dump(mode="json"),
        }
        holder = f"flow run {flow_run.get_name()} ({flow_run.get_id()})"
        with held(get_store(), lease_key(work), holder, self.trigger):
            yield


def dataset_inputs(
    name: str,
    reference: str,
    profile: str,
    overrides: dict[str, Any] | None,
    beyond_limits: bool,
    garments: list[str] | None,
    poses: list[str] | None,
    catalogue: str | None,
    roles: tuple[Role, ...] = (),
) -> DatasetInputs:
    """The parameters of a run, checked (with the weights of `roles` on this machine) before any task starts,
    and resolved: the input images read and stored by the run's first tasks."""
    trigger = normalise_trigger(name)
    model_profile = load_profile(profile)
    config = RunConfig.from_profile(model_profile, overrides, beyond_limits=beyond_limits)
    if roles:
        preflight(model_profile.for_upscale(config.dataset.upscale), get_settings(), roles, FORM_ADVICE)
    run_catalogue = catalogue_at(catalogue)
    shots = run_catalogue.shots(config.dataset.variations, garments=len(garments or []), poses=len(poses or []))
    check_inputs_used(shots, len(garments or []), len(poses or []))
    check_shot_count(len(shots), model_profile.limits, beyond_limits)
    return DatasetInputs(
        trigger=trigger,
        profile=model_profile,
        config=config,
        reference=fetch_input_image(reference, "reference", "reference.png"),
        garments=[fetch_input_image(at, "garment image", f"garment-{n}.png") for n, at in enumerate(garments or [])],
        poses=[fetch_input_image(at, "pose image", f"pose-{n}.png") for n, at in enumerate(poses or [])],
        catalogue=run_catalogue,
        catalogue_key=catalogue,
    )


def catalogue_at(location: str | None) -> Catalogue:
    """The run's catalogue: the default one, the default with a YAML file's entries on top, or a whole catalogue
    as the JSON copy the CLI stores (a `.json` name); each at a location as `read_location` takes it."""
    if location is None:
        return load_catalogue()
    if location.endswith(".json"):
        return Catalogue.model_validate_json(read_location(location, "catalogue", max_bytes=MAX_CATALOGUE_JSON_BYTES))
    data = read_location(location, "catalogue", max_bytes=MAX_CATALOGUE_FILE_BYTES)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(location).name
        path.write_bytes(data)
        return load_catalogue(path)


@flow(name="produce-dataset", log_prints=True, persist_result=True, result_serializer="json")
@described
def produce_dataset(
    name: str,
    reference: str,
    profile: ProfileName = "tiny",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
    garments: list[str] | None = None,
    poses: list[str] | None = None,
    catalogue: str | None = None,
) -> CharacterResult:
    """The captioned LoRA dataset of one character.

    Args:
        {name}
        {reference}
        {profile}
        {overrides}
        {beyond_limits}
        {garments}
        {poses}
        {catalogue}
    """
    run = dataset_inputs(name, reference, profile, overrides, beyond_limits, garments, poses, catalogue, DATASET_ROLES)
    with run.one_run_at_a_time("produce-dataset"):
        return run.build_dataset()


@flow(name="train-character", log_prints=True, persist_result=True, result_serializer="json")
@described
def train_character(
    name: str,
    dataset_run: str,
    profile: ProfileName = "tiny",
    backend: Backend = "local",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
) -> CharacterResult:
    """The character's LoRA, trained on the dataset another run made.

    Args:
        {name}
        dataset_run: The flow run id or name (as the Prefect UI shows it) of a produce-dataset or produce run.
        {profile}
        {backend}
        {overrides}
        {beyond_limits}
    """
    trigger = normalise_trigger(name)
    model_profile = load_profile(profile)
    config = RunConfig.from_profile(model_profile, overrides, beyond_limits=beyond_limits)
    previous = character_of_run(dataset_run, trigger)
    if not previous.dataset.items:
        raise InvalidInput(f"dataset run {dataset_run!r} kept no image: there is nothing to train {trigger} on")
    if backend == "local":
        preflight(model_profile, get_settings(), ("video",), FORM_ADVICE)
    # A pod's LoRA is probed by the render stage, on a GPU with the video model: this pool has neither.
    render_settings = config.render if backend == "local" else None
    lora = train_lora(
        previous.dataset.training_set(), config.train, model_profile, backend, config.pod, render_settings
    )
    return CharacterResult(dataset=previous.dataset, lora=lora)


# The render form's typed fields (`likeness render`'s options): the choices it offers and the values it takes.
Count = Annotated[int, Field(ge=0)]
Frames = Annotated[int, Field(ge=5)]
RenderSeed = Annotated[int, Field(ge=0, lt=SEED_RANGE)]
FxPreset = Literal[tuple(PRESETS)]
UpscaleSize = Literal[tuple(UPSCALE_SIZES)]


@flow(name="render-character", log_prints=True, persist_result=True, result_serializer="json")
@described
def render_character(
    name: str,
    lora_run: str,
    profile: ProfileName = "tiny",
    images: Count | None = None,
    videos: Count | None = None,
    prompts: list[str] | None = None,
    frames: Frames | None = None,
    fx: FxPreset | None = None,
    upscale: UpscaleSize | None = None,
    seed: RenderSeed | None = None,
    animate: str | None = None,
    animate_prompt: str | None = None,
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
) -> CharacterResult:
    """Images and videos of the character with the LoRA another run made, scored against its reference: the
    profile's prompts, or those asked for here as `likeness render` asks for them.

    Args:
        {name}
        lora_run: The flow run id or name (as the Prefect UI shows it) of a train-character or produce run.
        {profile}
        images: Render this many images, from seeded prompt variations of the character (`--images`).
        videos: Render this many videos, from seeded prompt variations with motion and camera (`--videos`).
        prompts: Your own prompts, one image each, as the lines of a `--prompts` .txt file; {trigger} in one
            becomes the trigger word. Not with images or videos.
        frames: Frames of each video, 4k+1 (41, 81): render.video_frames (`--frames`).
        fx: A post FX preset on every image and video frame: render.fx (`--fx`).
        upscale: Upscale the videos in chunks to this long side (3840, 2560 or 1920 px):
            render.upscale_long_side (`--upscale`).
        seed: The seed of the renders and of their prompt variations: render.seed.
        animate: A still of the character (one of its renders) to bring to life with the profile's
            image-to-video model, given as the reference is: a path the worker can read, an s3:// or https://
            URL, or a key in the artifact store (`--animate`). Alone, only the still is rendered.
        animate_prompt: The video prompt the still comes to life with ({trigger} is the trigger word); by
            default the still's own prompt (a render carries it) with motion and camera added.
        overrides: Any other setting that differs from the profile's, e.g. {"render": {"steps": 8}}; the
            fields above win over it.
        {beyond_limits}
    """
    trigger = normalise_trigger(name)
    model_profile = load_profile(profile)
    if prompts and (images or videos):
        raise InvalidInput("give prompts or images/videos, not both")
    if animate is not None:
        check_animator(model_profile, prefix="")
    elif animate_prompt:
        raise InvalidInput("animate_prompt is the video prompt of a still to animate: give the still (animate) too")
    motion = render_template(animate_prompt, trigger=trigger) if animate_prompt else None
    settings = with_render_options(overrides, frames, fx, upscale, seed, prefix="")
    config = RunConfig.from_profile(model_profile, settings, beyond_limits=beyond_limits)
    entries = requested_prompts(trigger, prompts, images, videos, config.render.seed, animate is not None)
    plan_renders(config.render, trigger, entries, model_profile.limits.render, beyond_limits)
    previous = character_of_run(lora_run, trigger)
    if previous.lora is None:
        raise InvalidInput(f"run {lora_run!r} trained no LoRA for {trigger}: give a training or produce run")
    still = None
    if animate is not None:
        png, lineage = read_still(animate)
        still = put_bytes(png, "still.png")
        motion = motion or still_prompt(lineage, config.render, trigger)
    roles: tuple[Role, ...] = ("video", "animator") if animate is not None else ("video",)
    preflight(model_profile, get_settings(), roles, FORM_ADVICE)
    dataset = previous.dataset
    lora = previous.lora
    if lora.strengths is None:
        # Not probed where it trained (a pod, which has no video model): probed here, before its renders.
        probe = config.render.for_probe()
        lora = probe_strengths(lora, dataset.reference, dataset.identity_checked, probe, model_profile)
    reference = dataset.reference if dataset.identity_checked else None
    renders = render(lora, config.render, model_profile, reference, entries, beyond_limits, still, motion)
    return previous.model_copy(update={"lora": lora, "renders": renders.items, "render_sheet": renders.contact_sheet})


def requested_prompts(
    trigger: str, prompts: list[str] | None, images: int | None, videos: int | None, seed: int, still: bool
) -> list[PromptEntry] | None:
    """The prompts a render run renders, as `likeness render` takes them: those listed, else seeded variations,
    else (None) the settings' templates; with a still to animate and nothing else asked for, none."""
    if prompts:
        return listed_prompts(prompts)
    if images or videos:
        return prompt_variations(CharacterPrompt(trigger=trigger), images or 0, videos or 0, seed, print)
    return [] if still else None


def character_of_run(run: str, trigger: str) -> CharacterResult:
    """What a finished stage run made for `trigger`, read from the shared results storage."""
    _, stored = completed_result(run)
    try:
        # Results are stored as JSON: the model comes back as its fields.
        result = CharacterResult.model_validate(stored)
    except ValidationError:
        raise InvalidInput(f"run {run!r} is not a Likeness stage run: its result is no character") from None
    if result.dataset.trigger != trigger:
        raise InvalidInput(f"run {run!r} made {result.dataset.trigger}, not {trigger}")
    return result

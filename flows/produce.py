"""The parent flow: one reference photo and a name in, a dataset, a LoRA and renders out."""

from __future__ import annotations

from typing import Any, NamedTuple

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.dataset import build_dataset
from flows.render import render
from flows.train import train_lora
from likeness.config import Backend, ModelProfile, RunConfig, check_shot_count
from likeness.dataset.catalogue import Catalogue, check_inputs_used, load_catalogue
from likeness.inputs import normalise_reference, normalise_trigger
from likeness.models.profiles import load_profile
from likeness.records import CharacterResult, DatasetItem, DatasetRef, LoraRef, RenderItem
from likeness.run.progress import prefect_artifact_key
from likeness.storage.artifacts import ArtifactRef, get_bytes, get_store, put_bytes


def image_from_store(key: str, label: str, filename: str) -> ArtifactRef:
    """An input image as people see it (oriented, 8-bit RGB), refused now if it is not usable."""
    info = get_store().info(key)
    photo = ArtifactRef(key=info.key, sha256=info.sha256, size=info.size)
    return put_bytes(normalise_reference(get_bytes(photo), f"{label} {key}").png, filename)


def catalogue_from_store(key: str | None) -> Catalogue:
    """The run's catalogue (a JSON copy in the store, as the CLI writes it), or the default one."""
    if key is None:
        return load_catalogue()
    info = get_store().info(key)
    return Catalogue.model_validate_json(get_bytes(ArtifactRef(key=info.key, sha256=info.sha256, size=info.size)))


class DatasetInputs(NamedTuple):
    """A run's parameters, checked and resolved: the profile, the settings and the input images in the store."""

    trigger: str
    profile: ModelProfile
    config: RunConfig
    reference: ArtifactRef
    garments: list[ArtifactRef]
    poses: list[ArtifactRef]
    catalogue: Catalogue

    def build_dataset(self) -> DatasetRef:
        """The dataset flow on these inputs."""
        return build_dataset(
            self.trigger, self.reference, self.config.dataset, self.profile, self.catalogue, self.garments, self.poses
        )


def dataset_inputs(
    name: str,
    reference: str,
    profile: str,
    overrides: dict[str, Any] | None,
    beyond_limits: bool,
    garments: list[str] | None,
    poses: list[str] | None,
    catalogue: str | None,
) -> DatasetInputs:
    """The parameters of a run, checked and resolved before any stage starts."""
    model_profile = load_profile(profile)
    config = RunConfig.from_profile(model_profile, overrides, beyond_limits=beyond_limits)
    run_catalogue = catalogue_from_store(catalogue)
    garment_refs = [image_from_store(key, "garment image", f"garment-{n}.png") for n, key in enumerate(garments or [])]
    pose_refs = [image_from_store(key, "pose image", f"pose-{n}.png") for n, key in enumerate(poses or [])]
    shots = run_catalogue.shots(config.dataset.variations, garments=len(garment_refs), poses=len(pose_refs))
    check_inputs_used(shots, len(garment_refs), len(pose_refs))
    check_shot_count(len(shots), model_profile.limits, beyond_limits)
    return DatasetInputs(
        trigger=normalise_trigger(name),
        profile=model_profile,
        config=config,
        reference=image_from_store(reference, "reference", "reference.png"),
        garments=garment_refs,
        poses=pose_refs,
        catalogue=run_catalogue,
    )


@flow(name="produce-character", log_prints=True)
def produce_character(
    name: str,
    reference: str,
    profile: str = "tiny",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
    garments: list[str] | None = None,
    poses: list[str] | None = None,
    catalogue: str | None = None,
    backend: Backend = "local",
) -> CharacterResult:
    """Dataset, LoRA (trained on `backend`) and renders for one character; `reference`, `garments`, `poses` and
    `catalogue` are keys in the artifact store (the catalogue a JSON copy; none: the default catalogue)."""
    run = dataset_inputs(name, reference, profile, overrides, beyond_limits, garments, poses, catalogue)
    dataset = run.build_dataset()
    if not dataset.items:
        # Nothing to train on; the dataset's manifest and contact sheet still say why every try was refused.
        print(f"{run.trigger}: curation kept no image, so no LoRA is trained")
        return CharacterResult(dataset=dataset)
    lora = train_lora(dataset.training_set(), run.config.train, run.profile, backend, run.config.pod)
    renders = render(lora, run.config.render, run.profile, dataset.reference if dataset.identity_checked else None)

    create_markdown_artifact(
        key=prefect_artifact_key(f"{run.trigger}-summary"),
        markdown=summary_markdown(run.trigger, profile, dataset.items, lora, list(renders.items)),
        description=f"{run.trigger}: what was produced",
    )
    return CharacterResult(dataset=dataset, lora=lora, renders=renders.items, render_sheet=renders.contact_sheet)


@flow(name="produce-dataset", log_prints=True)
def produce_dataset(
    name: str,
    reference: str,
    profile: str = "tiny",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
    garments: list[str] | None = None,
    poses: list[str] | None = None,
    catalogue: str | None = None,
) -> CharacterResult:
    """Only the dataset of one character; the parameters are those of `produce-character`."""
    run = dataset_inputs(name, reference, profile, overrides, beyond_limits, garments, poses, catalogue)
    return CharacterResult(dataset=run.build_dataset())


def summary_markdown(
    trigger: str, profile: str, items: tuple[DatasetItem, ...], lora: LoraRef, renders: list[RenderItem]
) -> str:
    """What a run made, as tables for the Prefect UI."""
    lines = [f"# {trigger} ({profile} profile)", "", "| image | caption |", "|---|---|"]
    lines += [f"| `{item.image.key}` | {item.caption} |" for item in items]
    lines += ["", "| LoRA step | loss | identity distance | weights |", "|---|---|---|---|"]
    for c in lora.checkpoints:
        loss = "" if c.loss is None else f"{c.loss:.4f}"
        distance = "" if c.identity_distance is None else f"{c.identity_distance:.3f}"
        best = " **best**" if c.step == lora.best.step else ""
        lines.append(f"| {c.step}{best} | {loss} | {distance} | `{c.weights.key}` |")
    lines += ["", "| render | prompt | seed | output |", "|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.prompt} | {r.seed} | `{r.output.key}` |" for r in renders]
    return "\n".join(lines)

"""The parent flow: one reference photo and a name in, a dataset, a LoRA and renders out."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from flows.render import render
from flows.stages import (
    DatasetInputs,
    ProfileName,
    character_of_run,
    dataset_inputs,
    described,
)
from flows.train import train_lora
from likeness.config import ROLES, Backend, check_stop_when_flat
from likeness.records import CharacterResult
from likeness.run.gallery import character_artifact_key, key_url, publish_character
from likeness.run.progress import prefect_artifact_key
from tasks.estimate import estimate_run, measure_run

# The stage deployments `prefect.yaml` declares, which a produce run started from its deployment dispatches to.
PRODUCE_DEPLOYMENT = "produce-character/produce"
DATASET_DEPLOYMENT = "produce-dataset/dataset"
TRAIN_DEPLOYMENTS: dict[str, str] = {
    "local": "train-character/train",
    "runpod-aitoolkit": "train-character/train-runpod",
    "runpod-native": "train-character/train-runpod",
}
RENDER_DEPLOYMENT = "render-character/render"
STAGE_POLL_S = 2.0


@flow(name="produce-character", log_prints=True, persist_result=True, result_serializer="json")
@described
def produce_character(
    name: str,
    reference: str,
    profile: ProfileName = "tiny",
    backend: Backend = "local",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
    garments: list[str] | None = None,
    poses: list[str] | None = None,
    catalogue: str | None = None,
) -> CharacterResult:
    """Dataset, LoRA and renders for one character. Started from its deployment, each stage runs as a run of
    its own deployment, on its pool; otherwise every stage runs here.

    Args:
        {name}
        {reference}
        {profile}
        {backend}
        {overrides}
        {beyond_limits}
        {garments}
        {poses}
        {catalogue}
    """
    # The stages' runs check the weights on their own machines; run here, every model runs here.
    dispatched = deployment.get_id() is not None
    roles = () if dispatched else ROLES
    run = dataset_inputs(name, reference, profile, overrides, beyond_limits, garments, poses, catalogue, roles)
    # Before the dataset is made, not once it is there to train on.
    check_stop_when_flat(run.config.train, backend, run.config.dataset.curation.identity)
    with run.one_run_at_a_time("produce-character"):
        # A GPU run is priced before it starts: the table is in the UI while the stages run.
        on_gpu = run.profile.device == "cuda"
        estimate = (
            estimate_run(run.trigger, run.profile, run.config, run.catalogue, backend, dispatched) if on_gpu else ()
        )
        if dispatched:
            result = dispatch_stages(run, profile, backend, overrides or {}, beyond_limits)
        else:
            result = run_stages_here(run, backend)
        result = result.model_copy(update={"estimate": estimate})
        if estimate:
            measure_run(run.trigger, estimate)
        # The pictures on this run, the one a person started, from the stages' results wherever they ran.
        publish_character(result, flow_run.get_id())
        pictures = key_url(character_artifact_key(run.trigger))
        where = f", and at {pictures}" if pictures else ""
        print(f"{run.trigger}: the pictures are on this run's Artifacts tab{where}")
        if result.lora is not None:
            create_markdown_artifact(
                key=prefect_artifact_key(f"{run.trigger}-summary"),
                markdown=summary_markdown(run.trigger, profile, result, str(flow_run.get_id()), pictures),
                description=f"{run.trigger}: what was produced",
            )
    return result


def run_stages_here(run: DatasetInputs, backend: Backend) -> CharacterResult:
    """Every stage in this process, as subflows."""
    dataset = run.build_dataset().dataset
    if not dataset.items:
        # Nothing to train on; the dataset's manifest and contact sheet still say why every try was refused.
        print(f"{run.trigger}: curation kept no image, so no LoRA is trained")
        return CharacterResult(dataset=dataset)
    # Every model is here, the video model too: the strengths are probed whichever backend trains.
    lora = train_lora(dataset.training_set(), run.config.train, run.profile, backend, run.config.pod, run.config.render)
    renders = render(lora, run.config.render, run.profile, dataset.reference if dataset.identity_checked else None)
    return CharacterResult(dataset=dataset, lora=lora, renders=renders.items, render_sheet=renders.contact_sheet)


def dispatch_stages(
    run: DatasetInputs, profile: str, backend: Backend, overrides: dict[str, Any], beyond_limits: bool
) -> CharacterResult:
    """Each stage as a run of its deployment, on its pool; the images go as the store keys this run read them to."""
    settings = {"profile": profile, "overrides": overrides, "beyond_limits": beyond_limits}
    dataset_run, result = run_stage(
        DATASET_DEPLOYMENT,
        {
            "name": run.trigger,
            "reference": run.reference.key,
            "garments": [ref.key for ref in run.garments],
            "poses": [ref.key for ref in run.poses],
            "catalogue": run.catalogue_key,
            **settings,
        },
    )
    if not result.dataset.items:
        print(f"{run.trigger}: curation kept no image, so no LoRA is trained")
        return result
    train_run, _ = run_stage(
        TRAIN_DEPLOYMENTS[backend], {"name": run.trigger, "dataset_run": dataset_run, "backend": backend, **settings}
    )
    _, result = run_stage(RENDER_DEPLOYMENT, {"name": run.trigger, "lora_run": train_run, **settings})
    return result


class StageFailed(RuntimeError):
    """A dispatched stage run that did not complete."""


def run_stage(deployment_name: str, parameters: dict[str, Any]) -> tuple[str, CharacterResult]:
    """Run a stage deployment and wait for it; its flow run id and result. The idempotency key is this run's id
    and the stage's: a retry of this run finds the stage run it started rather than starting another."""
    stage = deployment_name.partition("/")[0]
    child = run_deployment(
        deployment_name,
        parameters=parameters,
        idempotency_key=f"{flow_run.get_id()}:{stage}",
        poll_interval=STAGE_POLL_S,
    )
    state = child.state
    if state is None or not state.is_completed():
        ended = f"ended {state.name}: {state.message or 'no message'}" if state is not None else "never started"
        raise StageFailed(f"stage run {child.name} of {deployment_name} {ended}")
    print(f"{stage}: run {child.name} ({child.id}) completed")
    return str(child.id), character_of_run(str(child.id), parameters["name"])


def summary_markdown(
    trigger: str, profile: str, result: CharacterResult, run_id: str, pictures: str | None = None
) -> str:
    """What a run made, as tables for the Prefect UI, and the command that copies it into a folder; `pictures`: the
    UI page of the character's pictures."""
    key = character_artifact_key(trigger)
    lines = [f"# {trigger} ({profile} profile)", ""]
    lines += [f"The pictures: [{key}]({pictures})" if pictures else f"The pictures: the artifact `{key}`", ""]
    lines += ["Copy every file of this character into a folder:", ""]
    lines += [f"    likeness pull {run_id} --out likeness-out/{trigger}", "", "| image | caption |", "|---|---|"]
    lines += [f"| `{item.image.key}` | {item.caption} |" for item in result.dataset.items]
    lora = result.lora
    if lora is not None:
        lines += ["", "| LoRA step | loss | identity distance | weights |", "|---|---|---|---|"]
        for c in lora.checkpoints:
            loss = "" if c.loss is None else f"{c.loss:.4f}"
            distance = "" if c.identity_distance is None else f"{c.identity_distance:.3f}"
            best = " **best**" if c.step == lora.best.step else ""
            lines.append(f"| {c.step}{best} | {loss} | {distance} | `{c.weights.key}` |")
    lines += ["", "| render | prompt | seed | output |", "|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.prompt} | {r.seed} | `{r.output.key}` |" for r in result.renders]
    return "\n".join(lines)

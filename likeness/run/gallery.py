"""The character's pictures on the run a person started: one markdown artifact of the parent (`produce-character`)
run, '<trigger>-character', made from the stages' results whichever machine ran them.

Its description, which the Prefect UI (v2) shows on the artifact's card in the run's Artifacts tab, on the global
Artifacts page and above every version of the key, holds the pictures: the dataset's contact sheet, the chosen
checkpoint's identity-by-step plot, the strengths grid, each render (a video by its poster frame) with its identity
scores, and links to the stage runs. Its markdown, on the artifact's own page below them, holds the details: each
render's prompt and seed, and links to the stages' own pictures artifacts (every refused try, every checkpoint's
samples). The keys are per character, so the key's page is the character's gallery over time.

URLs are made as the stages' own pictures are (likeness.run.pictures): presigned on S3, data: thumbnails otherwise.

    publish_character(result, flow_run.get_id())      # in the produce run, once its stages are done
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple
from uuid import UUID

from likeness.identity import IDENTITY_THRESHOLD
from likeness.records import CharacterResult
from likeness.run.pictures import (
    cell_text,
    checkpoints_artifact_key,
    dataset_artifact_key,
    distance_text,
    image_url,
    markdown_image,
    median_text,
    publish_markdown,
    render_cell,
    renders_artifact_key,
)
from likeness.run.progress import prefect_artifact_key
from likeness.storage.artifacts import get_store
from likeness.storage.store import ArtifactStore

log = logging.getLogger(__name__)

# The long side of the contact sheet, plot and grid inlined (local store): as wide as the key's page shows them.
OVERVIEW_SIDE = 1024
# The flows whose runs are a character's stages: the stage deployments' runs, and the subflows that do the work
# (under the produce run itself, or under a stage deployment's run).
STAGE_OF_FLOW = {
    "produce-dataset": "dataset",
    "build-dataset": "dataset",
    "train-character": "training",
    "train-lora": "training",
    "render-character": "renders",
    "render": "renders",
}
STAGES = ("dataset", "training", "renders")


class StageRun(NamedTuple):
    """A flow run of one of a character's stages, and its page in the Prefect UI (None: no UI URL is known)."""

    stage: str
    flow: str
    name: str
    url: str | None


def character_artifact_key(trigger: str) -> str:
    return prefect_artifact_key(f"{trigger}-character")


def ui_url(path: str) -> str | None:
    """A page of the Prefect UI this process reports to (PREFECT_UI_URL, which Prefect derives from
    PREFECT_API_URL where unset); None where neither is set."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/{path.lstrip('/')}" if base else None


def key_url(key: str) -> str | None:
    """The UI's page of an artifact key: its newest version, and every earlier one."""
    return ui_url(f"artifacts/key/{key}")


def stage_runs(flow_run_id: UUID | str) -> list[StageRun]:
    """The stage runs under a run (subflows, dispatched stage runs and the subflows under those), in stage order,
    each stage's outer run first."""
    from prefect.client.orchestration import get_client

    from likeness.run.deployed import run_tree

    with get_client(sync_client=True) as client:
        runs = run_tree(client, UUID(str(flow_run_id)))[1:]
        flows: dict[UUID, str] = {}
        for run in runs:
            if run.flow_id not in flows:
                flows[run.flow_id] = client.read_flow(run.flow_id).name
    found = [
        StageRun(STAGE_OF_FLOW[flows[run.flow_id]], flows[run.flow_id], run.name, ui_url(f"runs/flow-run/{run.id}"))
        for run in runs
        if flows[run.flow_id] in STAGE_OF_FLOW
    ]
    return sorted(found, key=lambda run: STAGES.index(run.stage))


def character_overview(
    result: CharacterResult, runs: Sequence[StageRun] = (), store: ArtifactStore | None = None
) -> str:
    """The pictures: what the artifact's card and its key's page show (the artifact's description). Short lines:
    the card is narrow and cuts a line at its edge."""
    store = store or get_store()
    dataset, lora = result.dataset, result.lora
    trigger = dataset.trigger
    made = [f"{len(dataset.items)} kept images"]
    if lora is not None:
        made.append(f"LoRA step {lora.best.step} of {lora.final.step}")
    made.append(f"{len(result.renders)} renders")
    lines = [f"**{cell_text(trigger)}**: {' · '.join(made)}", ""]
    sheet = image_url(dataset.contact_sheet, store, OVERVIEW_SIDE)
    lines += [markdown_image(f"{trigger}: dataset contact sheet", sheet), ""]
    if lora is None:
        lines += ["No LoRA: curation kept no image (refused tries are framed in red).", ""]
    elif lora.scores_plot is None:
        lines += [f"Checkpoints not scored: the LoRA is the last, step {lora.final.step}.", ""]
    else:
        plot = image_url(lora.scores_plot, store, OVERVIEW_SIDE)
        lines += [markdown_image(f"{trigger}: identity distance by step", plot), ""]
    if lora is not None and lora.strengths is not None:
        grid = image_url(lora.strengths.grid, store, OVERVIEW_SIDE)
        lines += [markdown_image(f"{trigger}: identity distance by strength", grid), ""]
    if result.renders:
        lines += ["| render | identity | median |", "|---|---:|---:|"]
        for item in result.renders:
            best = distance_text(item.identity_distance, item.frames_scored > 0)
            lines.append(f"| {render_cell(item, f'{item.kind} s{item.seed}', store)} | {best} | {median_text(item)} |")
        lines += [
            "",
            f"Identity distance to the reference, the best frame and the median: lower is closer, the same person "
            f"below {IDENTITY_THRESHOLD}.",
            "",
        ]
    if runs:
        lines += ["Stage runs:", ""]
        lines += [f"- {run.stage}: {_run_link(run)}" for run in runs]
    return "\n".join([*lines, ""])


def character_details(result: CharacterResult) -> str:
    """Below the pictures, on the artifact's own page: each render's prompt and seed, and where the stages' own
    pictures are (the artifact's markdown)."""
    trigger = result.dataset.trigger
    lines = [f"### {cell_text(trigger)}: the details", ""]
    if result.renders:
        lines += [
            "| render | identity (best) | identity (median) | faces / frames | seed | prompt |",
            "|---|---:|---:|:---:|---:|---|",
        ]
        lines += [
            f"| {item.kind}, {item.size}px, {item.steps} steps "
            f"| {distance_text(item.identity_distance, item.frames_scored > 0)} | {median_text(item)} "
            f"| {item.faces_found} / {item.frames_scored} | {item.seed} | {cell_text(item.prompt)} |"
            for item in result.renders
        ]
        lines.append("")
    stage_pictures = [(dataset_artifact_key(trigger), "every refused try of the dataset, with its reasons")]
    if result.lora is not None:
        stage_pictures.append((checkpoints_artifact_key(trigger), "each checkpoint's samples and scores"))
        if result.lora.strengths is not None:
            stage_pictures.append((prefect_artifact_key(f"{trigger}-strengths"), "each pair of strengths' scores"))
    if result.renders:
        stage_pictures.append((renders_artifact_key(trigger), "the renders' contact sheet"))
    lines += ["The stages' own pictures, each key with every earlier version:", ""]
    lines += [f"- {_key_link(key)}: {what}" for key, what in stage_pictures]
    return "\n".join([*lines, ""])


def publish_character(
    result: CharacterResult, flow_run_id: UUID | str | None, store: ArtifactStore | None = None
) -> UUID | None:
    """The character's pictures as the markdown artifact '<trigger>-character' of the current run (the parent run
    a person started), with links to the stage runs under `flow_run_id`."""
    runs: list[StageRun] = []
    if flow_run_id is not None:
        try:
            runs = stage_runs(flow_run_id)
        except Exception as exc:  # the pictures still go up, without the links
            log.warning("could not read the stage runs of flow run %s: %s", flow_run_id, exc)
    return publish_markdown(
        character_artifact_key(result.dataset.trigger),
        lambda: character_details(result),
        lambda: character_overview(result, runs, store),
    )


def _run_link(run: StageRun) -> str:
    text = f"{run.flow} {cell_text(run.name)}"
    return f"[{text}]({run.url})" if run.url else f"{text}"


def _key_link(key: str) -> str:
    url = key_url(key)
    return f"[{key}]({url})" if url else f"`{key}`"

"""The parent flow: one reference photo and a name in, a dataset, a LoRA and renders out."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.dataset import build_dataset
from flows.render import render
from flows.train import train_lora
from likeness.artifacts import ArtifactRef, get_bytes, get_store, put_bytes
from likeness.config import RunConfig
from likeness.inputs import normalise_reference, normalise_trigger
from likeness.profiles import load_profile
from likeness.progress import prefect_artifact_key
from likeness.records import CharacterResult, DatasetItem, LoraRef, RenderItem


def reference_from_store(key: str) -> ArtifactRef:
    """The reference photo as people see it (oriented, 8-bit RGB), refused now if it is not usable."""
    info = get_store().info(key)
    photo = ArtifactRef(key=info.key, sha256=info.sha256, size=info.size)
    return put_bytes(normalise_reference(get_bytes(photo), f"reference {key}").png, "reference.png")


@flow(name="produce-character", log_prints=True)
def produce_character(
    name: str,
    reference: str,
    profile: str = "tiny",
    overrides: dict[str, Any] | None = None,
    beyond_limits: bool = False,
) -> CharacterResult:
    """Dataset, LoRA and renders for one character; `reference` is the photo's key in the artifact store."""
    trigger = normalise_trigger(name)
    model_profile = load_profile(profile)
    config = RunConfig.from_profile(model_profile, overrides, beyond_limits=beyond_limits)
    reference_ref = reference_from_store(reference)

    dataset = build_dataset(trigger, reference_ref, config.dataset, model_profile)
    lora = train_lora(dataset, config.train, model_profile)
    renders = render(lora, config.render, model_profile)

    create_markdown_artifact(
        key=prefect_artifact_key(f"{trigger}-summary"),
        markdown=summary_markdown(trigger, profile, dataset.items, lora, renders),
        description=f"{trigger}: what was produced",
    )
    return CharacterResult(dataset=dataset, lora=lora, renders=tuple(renders))


def summary_markdown(
    trigger: str, profile: str, items: tuple[DatasetItem, ...], lora: LoraRef, renders: list[RenderItem]
) -> str:
    """What a run made, as tables for the Prefect UI."""
    lines = [f"# {trigger} ({profile} profile)", "", "| image | caption |", "|---|---|"]
    lines += [f"| `{item.image.key}` | {item.caption} |" for item in items]
    lines += ["", "| LoRA step | loss | weights |", "|---|---|---|"]
    lines += [f"| {c.step} | {c.loss:.4f} | `{c.weights.key}` |" for c in lora.checkpoints]
    lines += ["", "| render | prompt | seed | output |", "|---|---|---|---|"]
    lines += [f"| {r.kind} | {r.prompt} | {r.seed} | `{r.output.key}` |" for r in renders]
    return "\n".join(lines)

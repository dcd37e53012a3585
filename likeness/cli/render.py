"""`likeness render`: images and videos of a trained character, scored against its reference photo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from likeness.cli.console import refusing, say
from likeness.cli.flow_run import FlowRun
from likeness.cli.options import BeyondLimits, Name, Overrides, Profile, Refresh, ScoringReference, Verbose
from likeness.records import LoraCheckpoint, LoraRef, Renders
from likeness.run.outputs import export_render_outputs
from likeness.run.prepare_render import RenderInputs, prepare_render, render_inputs, with_still
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import put_bytes
from likeness.storage.store import ArtifactStore


def render_command(
    name: Name,
    from_out: Annotated[
        Path, typer.Option("--from", help="The output folder of a `produce` or `train` run: its LoRA (lora/).")
    ],
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompts: a .txt file (one a line) or a .yaml list, each entry with its own options."),
    ] = None,
    images: Annotated[int | None, typer.Option(help="Render this many images, from seeded prompt variations.")] = None,
    videos: Annotated[int | None, typer.Option(help="Render this many videos, from seeded prompt variations.")] = None,
    frames: Annotated[
        int | None, typer.Option(help="Frames of each video (4k+1: 41, 81); render.video_frames.")
    ] = None,
    fx: Annotated[str | None, typer.Option(help="A post FX preset: none, seed-look; render.fx.")] = None,
    upscale: Annotated[
        str | None, typer.Option(help="Upscale the videos in chunks: 4k, 1440p or 1080p; render.upscale_long_side.")
    ] = None,
    animate: Annotated[
        Path | None,
        typer.Option(help="A still of the character (a render) to bring to life with Wan 2.2 image-to-video."),
    ] = None,
    image: ScoringReference = None,
    profile: Profile = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
) -> None:
    """Render images and videos of a trained character with its LoRA, scored against its reference photo."""
    settings = get_settings()
    with refusing():
        inputs = render_inputs(
            name, from_out, prompts, images, videos, frames, fx, upscale, image, profile, overrides, beyond_limits, say
        )
        if animate is not None:
            # Only the still comes to life unless other renders are asked for too.
            inputs = with_still(inputs if prompts or images or videos else inputs._replace(prompts=[]), animate)
        store = prepare_render(inputs, from_out, animate is not None, settings)
    RenderRun(inputs, from_out, store, settings).start(refresh, verbose)


class RenderRun(FlowRun):
    """One `likeness render` run: renders of a trained character, added to its output folder."""

    def __init__(self, inputs: RenderInputs, out: Path, store: ArtifactStore, settings: Settings) -> None:
        super().__init__(inputs.trigger, out, {}, "", store, settings)
        self.inputs = inputs
        # The record entries of the renders this run made, once exported.
        self._made: list[dict[str, Any]] = []

    def _finish(self, manifest: dict[str, Any]) -> None:
        Console().print(render_scores_table(self._made, f"{self.trigger} -> {self.out}"))

    def _export(self, result: Renders, stats: dict[str, Any]) -> dict[str, Any]:
        record = export_render_outputs(result, self.trigger, self.out, self.store)
        made = {f"renders/{self.trigger}_{item.output.filename}" for item in result.items}
        self._made = [entry for entry in record["renders"] if entry["file"] in made]
        return record

    def _flow_state(self) -> Any:
        from flows.render import render
        from likeness.storage.artifacts import put_file

        inputs = self.inputs
        files = [put_file(path, store=self.store) for path in inputs.lora_files]
        checkpoint = LoraCheckpoint.from_files(inputs.step, None, files, [])
        lora = LoraRef(
            trigger=inputs.trigger,
            base_model=inputs.profile.models["video"].source,
            base=inputs.config.train.base,
            checkpoints=(checkpoint,),
            best_step=inputs.step,
        )
        reference = put_bytes(inputs.reference.png, "reference.png", self.store) if inputs.reference else None
        still = put_bytes(inputs.still_png, "still.png", self.store) if inputs.still_png else None
        return render(
            lora,
            inputs.config.render,
            inputs.profile,
            reference,
            inputs.prompts,
            inputs.beyond_limits,
            still,
            inputs.animate_prompt,
            return_state=True,
        )


def render_scores_table(entries: list[dict[str, Any]], title: str) -> Table:
    """The renders a run made, each with its faces found and identity distances, file names whole."""
    table = Table(title=title)
    for column in ("render", "faces / frames", "identity (best)", "identity (median)"):
        # A file name is folded onto a second line rather than cut: it is what people look for.
        table.add_column(column, overflow="fold")
    for entry in entries:
        best, median = entry.get("identity_distance"), entry.get("identity_median")
        table.add_row(
            entry["file"],
            f"{entry['faces_found']} / {entry['frames_scored']}" if entry["frames_scored"] else "not scored",
            "" if best is None else f"{best:.3f}",
            "" if median is None else f"{median:.3f}",
        )
    return table

"""The `likeness` command line: produce a character locally, list profiles, fetch a sample photo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn

import typer
import yaml
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from likeness.config import BACKENDS, RunConfig, check_shot_count
from likeness.dataset.catalogue import Catalogue, check_inputs_used, load_catalogue
from likeness.inputs import InvalidInput, ReferenceImage, normalise_trigger, read_reference_image
from likeness.models.profiles import ProfileUnavailable, available_profiles, load_profile, preflight
from likeness.records import CharacterResult
from likeness.run import progress
from likeness.run.errors import describe_failure
from likeness.run.interrupts import Interrupted, exit_now, interruptible
from likeness.run.outputs import (
    DATASET_CONTACT_SHEET,
    DATASET_MANIFEST,
    OutputConflict,
    check_output_folder,
    export_outputs,
    is_up_to_date,
    run_identity,
    run_key,
)
from likeness.run.prefect_server import ServerStartError, TemporaryPrefectServer
from likeness.run.runlog import log_file_path, route_logs
from likeness.run.write_checks import (
    WriteCheckFailed,
    check_out_location,
    check_writable,
    estimate_run_bytes,
    video_transformer_config,
)
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import get_store, put_bytes
from likeness.storage.store import ArtifactStore, CorruptObject, MissingObject, StoreError

# Locals in tracebacks could show secrets from the settings.
app = typer.Typer(
    help="Likeness: consistent AI characters from one reference photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`render.seed=3` style assignments as nested dicts; values are read as YAML scalars."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise InvalidInput(f"--set {assignment!r} is not of the form section.field=value")
        node = overrides
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overrides


def _configure_environment(results_dir: Path, refresh: bool) -> None:
    """Persist results and cache records beside the artifact store; quiet the libraries' own bars.

    Must run before Prefect, diffusers and transformers are imported: they read these once.
    """
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(results_dir))
    # The local server would otherwise phone home; Likeness talks to nothing it was not pointed at.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for variable, value in (
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(variable, value)
    if refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"


class StageTracker:
    """Feeds progress to the bar (or to plain lines when stderr is not a terminal) and remembers where the run is."""

    PLAIN_EVERY_S = 10.0

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.stage = "start-up"
        self.done = self.total = 0
        self._bars: dict[str, Any] = {}
        self._printed: tuple[str, float] = ("", 0.0)

    def __call__(self, stage: str, done: int, total: int, detail: str) -> None:
        self.stage, self.done, self.total = stage, done, total
        if console.is_terminal:
            if stage not in self._bars:
                self._bars[stage] = self.progress.add_task(stage, total=total)
            description = f"{stage} {detail}".strip()
            self.progress.update(self._bars[stage], completed=done, total=total, description=description)
            return
        # CI logs: a line when a stage starts or ends, and now and then in between.
        last_stage, last_time = self._printed
        now = time.monotonic()
        if stage != last_stage or done in (0, total) or now - last_time > self.PLAIN_EVERY_S:
            _say(f"{stage} {done}/{total} {detail}".rstrip())
            self._printed = (stage, now)

    def where(self) -> str:
        if self.total:
            return f"{self.stage} ({self.done} of {self.total} done)"
        return self.stage


Profile = Annotated[
    str | None,
    typer.Option(
        help="Model profile: tiny, production, permissive, or a .yaml path [default: $LIKENESS_PROFILE or tiny]."
    ),
]
Out = Annotated[Path | None, typer.Option(help="Output folder (default: likeness-out/<name>).")]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: render.seed=3, train.steps=500.")
]
Refresh = Annotated[bool, typer.Option(help="Run every stage again, ignoring cached results.")]
BeyondLimits = Annotated[
    bool, typer.Option(help="Allow settings past the profile's soft limits (sizes, steps, frames).")
]
Verbose = Annotated[bool, typer.Option(help="Show Prefect's logs on the console.")]
Name = Annotated[str, typer.Argument(help="Character name; it becomes the trigger word (spaces -> '_').")]
ReferencePath = Annotated[Path, typer.Option("--image", help="The reference photo.")]
Garments = Annotated[
    list[Path] | None, typer.Option("--garment", help="A garment image for the try-on shots (repeatable).")
]
Poses = Annotated[
    list[Path] | None, typer.Option("--pose", help="A pose reference image for the pose-transfer shots (repeatable).")
]
CatalogueFile = Annotated[
    Path | None, typer.Option("--catalogue", help="A YAML catalogue whose entries add to or replace the default's.")
]
TrainBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Where the LoRA trains: local (this machine), runpod-native (our trainer on a RunPod pod) or "
        "runpod-aitoolkit (AI Toolkit on a pod); the pod is set with --set pod.gpu_types=[...].",
    ),
]
NoIdentity = Annotated[
    bool,
    typer.Option(
        "--no-identity", help="Curate without the face-identity check (an illustrated or stylised character)."
    ),
]


@app.command()
def produce(
    name: Name,
    image: ReferencePath,
    garment: Garments = None,
    pose: Poses = None,
    catalogue: CatalogueFile = None,
    no_identity: NoIdentity = False,
    profile: Profile = None,
    out: Out = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
    backend: TrainBackend = "local",
) -> None:
    """Make the dataset, train the LoRA (here or on a RunPod pod) and render images and a video."""
    run = _prepare(
        "produce", name, image, garment, pose, catalogue, no_identity, profile, out, overrides, refresh, beyond_limits
    )
    if run is not None:
        run.backend = _checked_backend(backend)
        run.start(refresh, verbose, beyond_limits)


@app.command()
def dataset(
    name: Name,
    image: ReferencePath,
    garment: Garments = None,
    pose: Poses = None,
    catalogue: CatalogueFile = None,
    no_identity: NoIdentity = False,
    profile: Profile = None,
    out: Out = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
) -> None:
    """Make only the LoRA training dataset: curated images, captions, masks, manifest and contact sheet."""
    run = _prepare(
        "dataset", name, image, garment, pose, catalogue, no_identity, profile, out, overrides, refresh, beyond_limits
    )
    if run is not None:
        run.start(refresh, verbose, beyond_limits)


def _prepare(
    command: str,
    name: str,
    image: Path,
    garments: list[Path] | None,
    poses: list[Path] | None,
    catalogue_path: Path | None,
    no_identity: bool,
    profile: str | None,
    out: Path | None,
    overrides: list[str] | None,
    refresh: bool,
    beyond_limits: bool,
) -> CharacterRun | None:
    """Check every input before any model loads; None when the output folder is already up to date."""
    settings = get_settings()
    profile = profile or settings.profile
    try:
        trigger = normalise_trigger(name)
        reference = read_reference_image(image)
        second = {
            "garment": [read_reference_image(path, "garment image") for path in garments or []],
            "pose": [read_reference_image(path, "pose image") for path in poses or []],
        }
        catalogue = load_catalogue(catalogue_path)
        model_profile = load_profile(profile)
        # --no-identity is the setting it stands for, after any --set of it.
        assignments = [*(overrides or []), *(["dataset.curation.identity=false"] if no_identity else [])]
        config = RunConfig.from_profile(model_profile, parse_overrides(assignments), beyond_limits=beyond_limits)
        shots = catalogue.shots(config.dataset.variations, garments=len(second["garment"]), poses=len(second["pose"]))
        check_inputs_used(shots, len(second["garment"]), len(second["pose"]))
        check_shot_count(len(shots), model_profile.limits, beyond_limits)
        out = out or Path("likeness-out") / trigger
        inputs = {
            "garments": [picture.original_sha256 for picture in second["garment"]],
            "poses": [picture.original_sha256 for picture in second["pose"]],
            "catalogue": catalogue_digest(catalogue),
        }
        identity = run_identity(trigger, reference.original_sha256, model_profile, config, inputs)
        key = run_key(identity, config, command)
        record = check_output_folder(out, identity)
        if not refresh and is_up_to_date(out, record, key):
            _say(f"{trigger}: {out} is up to date (same photo, profile and settings; files unchanged)")
            return None
        warning = check_reference_face(reference, str(image), config.dataset.curation.identity)
        preflight(model_profile, settings)
        store = get_store()
        check_out_location(out, settings, store)
        transformer = video_transformer_config(model_profile, settings)
        check_writable(out, store, estimate_run_bytes(config, transformer, len(shots)))
    except (InvalidInput, ProfileUnavailable, OutputConflict, StoreError, WriteCheckFailed) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(describe_failure(exc))
    for note in [*reference.notes, *(n for pictures in second.values() for picture in pictures for n in picture.notes)]:
        _say(f"note: {note}")
    if warning:
        _say(f"warning: {warning}")
    inputs_png = RunInputs(
        reference.png, [p.png for p in second["garment"]], [p.png for p in second["pose"]], catalogue
    )
    return CharacterRun(command, trigger, inputs_png, profile, config, out, identity, key, store, settings)


def _checked_backend(backend: str) -> str:
    """The backend, if it is one; a RunPod one only with a key (checked against the API) and an S3 store."""
    if backend not in BACKENDS:
        _fail(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "local":
        from likeness.runpod.pods import RunPodError
        from likeness.training.remote import check_remote_store, runpod_client

        try:
            check_remote_store()
            runpod_client()
        except (InvalidInput, RunPodError) as exc:
            _fail(str(exc))
    return backend


def catalogue_digest(catalogue: Catalogue) -> str:
    """What of a catalogue decides the dataset: its entries, not where they were read from."""
    return hashlib.sha256(json.dumps(catalogue.model_dump(mode="json")["entries"]).encode()).hexdigest()


def check_reference_face(reference: ReferenceImage, label: str, identity: bool) -> str | None:
    """Refuse a reference with no face when curation checks identity; a warning when it has several."""
    if not identity:
        return None
    from likeness.identity import reference_face

    _, warning = reference_face(Image.open(io.BytesIO(reference.png)), label)
    return warning


class RunInputs(NamedTuple):
    """The checked inputs of a run, as they go into the store."""

    reference_png: bytes
    garment_pngs: list[bytes]
    pose_pngs: list[bytes]
    catalogue: Catalogue


class CharacterRun:
    """One `produce` or `dataset` run after its inputs were checked: Prefect, the flow, the export, how it ends."""

    def __init__(
        self,
        command: str,
        trigger: str,
        inputs: RunInputs,
        profile: str,
        config: RunConfig,
        out: Path,
        identity: dict[str, Any],
        key: str,
        store: ArtifactStore,
        settings: Settings,
    ) -> None:
        self.command, self.trigger, self.inputs, self.profile, self.config = command, trigger, inputs, profile, config
        self.out, self.identity, self.key, self.store = out, identity, key, store
        self.log_path = log_file_path(settings.data_dir, trigger)
        self.results_dir, self.beyond_limits = settings.results_dir, False
        self.server: TemporaryPrefectServer | None = None
        self.tracker: StageTracker | None = None
        self.backend = "local"

    def start(self, refresh: bool, verbose: bool, beyond_limits: bool) -> None:
        """Run to the end, or stop on Ctrl-C / SIGTERM saying what was interrupted."""
        self.beyond_limits = beyond_limits
        _configure_environment(self.results_dir, refresh)
        try:
            with interruptible(on_forced_exit=self._say_interrupted):
                try:
                    self._run(verbose)
                except Interrupted as interrupt:
                    exit_now(interrupt.exit_code, partial(self._say_interrupted, interrupt))
        except (OSError, ServerStartError) as exc:
            self._stop_server()
            _fail(f"{describe_failure(exc)} (during {self._where()}); details in {self.log_path}")

    def _say_interrupted(self, interrupt: Interrupted) -> None:
        self._stop_server(drain_s=1.0)
        _say(
            f"interrupted ({interrupt}) during {self._where()}; finished stages are cached: "
            "run the same command again to resume from them"
        )

    def _where(self) -> str:
        return self.tracker.where() if self.tracker else "start-up"

    def _stop_server(self, drain_s: float = 5.0) -> None:
        """Send Prefect's queued logs and events, then stop the temporary server (a no-op against a running one)."""
        if "prefect" in sys.modules:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=drain_s)
            EventsWorker.drain_all(timeout=drain_s)
        if self.server is not None:
            self.server.stop()

    def _run(self, verbose: bool) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if not os.environ.get("PREFECT_API_URL"):
            self.server = TemporaryPrefectServer(self.log_path)
            self.server.start()
        try:
            if self.server is not None:
                os.environ["PREFECT_API_URL"] = self.server.wait_ready()
            import prefect  # noqa: F401  (it sets up its logging on import; route_logs redirects that)

            route_logs(self.log_path, verbose, _say)
            manifest = self._produce_and_export()
        finally:
            self._stop_server()
        _print_summary(self.out, manifest)
        if not any(name.endswith(".png") for name in manifest["dataset"]):
            _fail(
                f"curation kept no image, so there is nothing to train on: every refused try and its reasons are in "
                f"{self.out / DATASET_MANIFEST} and {self.out / DATASET_CONTACT_SHEET}; loosen dataset.curation "
                "(e.g. --set dataset.curation.max_tries=5) or, for an illustrated character, pass --no-identity"
            )

    def _produce_and_export(self) -> dict[str, Any]:
        """Run the flow and export; a corrupt artifact met on the way is moved aside and remade by one more run."""
        try:
            return self._attempt()
        except CorruptObject as exc:
            _say(f"{exc}: running it now")
        try:
            return self._attempt()
        except CorruptObject as exc:
            _fail(str(exc))

    def _attempt(self) -> dict[str, Any]:
        from likeness.models import pipelines

        started = time.perf_counter()
        result, flow_run_id = self._produce_result()
        stats = {
            "flow_run_id": flow_run_id,
            "seconds": round(time.perf_counter() - started, 2),
            "model_loads": dict(pipelines.load_counts),
        }
        try:
            return export_outputs(result, self.out, self.identity, self.key, self.store, stats)
        except (OutputConflict, MissingObject) as exc:
            _fail(str(exc))

    def _produce_result(self) -> tuple[CharacterResult, str]:
        """The flow's result and run id; a failure that is a file-system or store problem is raised as such."""
        state = self._produce()
        if state.is_completed():
            return state.result(), str(state.state_details.flow_run_id)
        cause = state.result(raise_on_failure=False)
        if isinstance(cause, OSError | CorruptObject):
            raise cause
        failure = describe_failure(cause)
        _fail(f"the run ended {state.name} during {self._where()}: {failure}; details in {self.log_path}")

    def _produce(self) -> Any:
        from flows.produce import produce_character, produce_dataset

        inputs = self.inputs
        parameters = {
            "name": self.trigger,
            "reference": put_bytes(inputs.reference_png, "reference.png", self.store).key,
            "garments": [
                put_bytes(png, f"garment-{n}.png", self.store).key for n, png in enumerate(inputs.garment_pngs)
            ],
            "poses": [put_bytes(png, f"pose-{n}.png", self.store).key for n, png in enumerate(inputs.pose_pngs)],
            "catalogue": put_bytes(inputs.catalogue.model_dump_json().encode(), "catalogue.json", self.store).key,
            "profile": self.profile,
            "overrides": self.config.model_dump(mode="json"),
            "beyond_limits": self.beyond_limits,
        }
        if self.command == "produce":
            parameters["backend"] = self.backend
        flow = produce_character if self.command == "produce" else produce_dataset
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            self.tracker = StageTracker(bar)
            progress.add_listener(self.tracker)
            try:
                return flow(**parameters, return_state=True)
            finally:
                progress.remove_listener(self.tracker)


def _print_summary(out: Path, manifest: dict[str, Any]) -> None:
    table = Table(title=f"{manifest['identity']['trigger']} -> {out}")
    table.add_column("what")
    table.add_column("files")
    table.add_row("dataset", str(len(manifest["dataset"])))
    if manifest["lora"]:
        best = next((entry for entry in manifest["lora"] if entry.get("best")), manifest["lora"][-1])
        score = best.get("identity_distance")
        chosen = f"step {best['step']}" + (f", identity distance {score:.3f}" if score is not None else "")
        table.add_row("lora", f"{', '.join(best.get('published_as', best['files']))} ({chosen})")
        table.add_row("lora checkpoints", ", ".join(str(entry["step"]) for entry in manifest["lora"]))
    if manifest["renders"]:
        table.add_row("renders", "\n".join(entry["file"] for entry in manifest["renders"]))
    loads = manifest["last_run"]["model_loads"]
    table.add_row(
        "models loaded", ", ".join(f"{role} x{count}" for role, count in loads.items()) or "none (all cached)"
    )
    table.add_row("seconds", str(manifest["last_run"]["seconds"]))
    Console().print(table)


def _say(message: str) -> None:
    console.print(message, soft_wrap=True, highlight=False, markup=False)


def _fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def profiles() -> None:
    """List the model profiles and the model behind each role."""
    for name in available_profiles():
        profile = load_profile(name)
        console.print(f"[bold]{name}[/] ({profile.device}, {profile.dtype}): {profile.description}")
        for role, spec in profile.models.items():
            console.print(f"  {role:<10} {spec.source}{'/' + spec.file if spec.file else ''}  [{spec.licence}]")


@app.command("sample-photo")
def sample_photo(path: Annotated[Path, typer.Argument(help="Where to write the photo (.jpg).")]) -> None:
    """Write a real face photo (Grace Hopper, from matplotlib's sample data) to try Likeness with."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if path.exists():
        _fail(f"{path} exists; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()

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
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from likeness import __version__
from likeness.config import BACKENDS, ModelProfile, ModelSpec, Role, RunConfig, check_shot_count, render_template
from likeness.dataset.catalogue import Catalogue, check_inputs_used, load_catalogue
from likeness.inputs import InvalidInput, ReferenceImage, normalise_trigger, parse_overrides, read_reference_image
from likeness.models.profiles import ProfileUnavailable, available_profiles, load_profile, preflight
from likeness.records import CharacterResult, LoraCheckpoint, LoraRef, Renders, TrainingItem, TrainingSet
from likeness.render.prompts import CharacterPrompt, PromptEntry
from likeness.run import progress
from likeness.run.errors import describe_failure
from likeness.run.interrupts import Interrupted, exit_now, interruptible
from likeness.run.outputs import (
    DATASET_CONTACT_SHEET,
    DATASET_MANIFEST,
    MANIFEST,
    RECORD_FORMAT,
    REFERENCE,
    OutputConflict,
    check_output_folder,
    export_lora_outputs,
    export_outputs,
    export_render_outputs,
    file_sha256,
    is_up_to_date,
    read_record,
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
    lora_checkpoint_bytes,
    stored_video_transformer_config,
    video_transformer_config,
)
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import ArtifactRef, get_store, put_bytes
from likeness.storage.store import ArtifactStore, CorruptObject, MissingObject, StoreError
from likeness.training.data import TrainingImage, read_training_folder

# Locals in tracebacks could show secrets from the settings.
app = typer.Typer(
    help="Likeness: consistent AI characters from one reference photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def _configure_environment(refresh: bool) -> None:
    """Quiet the libraries' own bars; no analytics.

    Must run before Prefect, diffusers and transformers are imported: they read these once.
    """
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
        run.start(refresh, verbose)


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
        run.start(refresh, verbose)


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
    run = CharacterRun(command, trigger, inputs_png, profile, config, out, identity, key, store, settings)
    run.beyond_limits = beyond_limits
    return run


def _checked_backend(backend: str, quiet: bool = False) -> str:
    """The backend, if it is one; a RunPod one only with a key (checked against the API) and an S3 store.

    `quiet`: only that it is a backend, for `--print-config`, which starts nothing.
    """
    if backend not in BACKENDS:
        _fail(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "local" and not quiet:
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


class FlowRun:
    """One run of a flow after its inputs were checked: Prefect, the flow, the export, how it ends."""

    def __init__(
        self, trigger: str, out: Path, identity: dict[str, Any], key: str, store: ArtifactStore, settings: Settings
    ) -> None:
        self.trigger, self.out, self.identity, self.key, self.store = trigger, out, identity, key, store
        self.log_path = log_file_path(settings.data_dir, trigger)
        self.server: TemporaryPrefectServer | None = None
        self.tracker: StageTracker | None = None

    def start(self, refresh: bool, verbose: bool) -> None:
        """Run to the end, or stop on Ctrl-C / SIGTERM saying what was interrupted."""
        _configure_environment(refresh)
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
        _drain_prefect(drain_s)
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
            from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings

            from likeness.storage.results import save_results_block

            route_logs(self.log_path, verbose, _say)
            with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: save_results_block()}):
                manifest = self._run_and_export()
        finally:
            self._stop_server()
        self._finish(manifest)

    def _finish(self, manifest: dict[str, Any]) -> None:
        _print_summary(self.out, manifest)

    def _run_and_export(self) -> dict[str, Any]:
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
        result, flow_run_id = self._result()
        stats = {
            "flow_run_id": flow_run_id,
            "seconds": round(time.perf_counter() - started, 2),
            "model_loads": dict(pipelines.load_counts),
        }
        try:
            return self._export(result, stats)
        except (OutputConflict, MissingObject) as exc:
            _fail(str(exc))

    def _result(self) -> tuple[Any, str]:
        """The flow's result and run id; a failure that is a file-system or store problem is raised as such."""
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        ) as bar:
            self.tracker = StageTracker(bar)
            progress.add_listener(self.tracker)
            try:
                state = self._flow_state()
            finally:
                progress.remove_listener(self.tracker)
        if state.is_completed():
            return state.result(), str(state.state_details.flow_run_id)
        if state.is_cancelling() or state.is_cancelled():
            self._mark_cancelled(state)
            _fail(
                f"the run was cancelled (from the Prefect UI or API) during {self._where()}; details in {self.log_path}"
            )
        cause = state.result(raise_on_failure=False)
        if isinstance(cause, OSError | CorruptObject):
            raise cause
        failure = describe_failure(cause)
        _fail(f"the run ended {state.name} during {self._where()}: {failure}; details in {self.log_path}")

    @staticmethod
    def _mark_cancelled(state: Any) -> None:
        """A flow run cancelled while this process ran it ends Cancelled: no worker is there to finish it."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        if state.is_cancelling():
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(state.state_details.flow_run_id, Cancelled(), force=True)

    def _flow_state(self) -> Any:
        """Run the flow and return its final state."""
        raise NotImplementedError

    def _export(self, result: Any, stats: dict[str, Any]) -> dict[str, Any]:
        """Copy the flow's result into the output folder; the folder's record."""
        raise NotImplementedError


class CharacterRun(FlowRun):
    """One `produce` or `dataset` run: the dataset, and for `produce` the LoRA and renders."""

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
        super().__init__(trigger, out, identity, key, store, settings)
        self.command, self.inputs, self.profile, self.config = command, inputs, profile, config
        self.backend = "local"
        self.beyond_limits = False

    def _finish(self, manifest: dict[str, Any]) -> None:
        super()._finish(manifest)
        if not any(name.endswith(".png") for name in manifest["dataset"]):
            _fail(
                f"curation kept no image, so there is nothing to train on: every refused try and its reasons are in "
                f"{self.out / DATASET_MANIFEST} and {self.out / DATASET_CONTACT_SHEET}; loosen dataset.curation "
                "(e.g. --set dataset.curation.max_tries=5) or, for an illustrated character, pass --no-identity"
            )

    def _export(self, result: CharacterResult, stats: dict[str, Any]) -> dict[str, Any]:
        from likeness.run.deployed import stage_seconds

        stats = {**stats, "stage_seconds": stage_seconds(stats["flow_run_id"])}
        return export_outputs(result, self.out, self.identity, self.key, self.store, stats)

    def _flow_state(self) -> Any:
        from flows.produce import produce_character
        from flows.stages import produce_dataset

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
        return flow(**parameters, return_state=True)


class TrainRun(FlowRun):
    """One `likeness train` run: a LoRA from a training folder, written into its own output folder."""

    def __init__(self, inputs: TrainingInputs, out: Path, key: str, store: ArtifactStore, settings: Settings) -> None:
        super().__init__(inputs.trigger, out, inputs.identity(), key, store, settings)
        self.inputs = inputs
        self.reference: ArtifactRef | None = None

    def _export(self, result: LoraRef, stats: dict[str, Any]) -> dict[str, Any]:
        return export_lora_outputs(result, self.out, self.identity, self.key, self.store, stats, self.reference)

    def _flow_state(self) -> Any:
        from flows.train import train_lora

        inputs = self.inputs
        training = upload_training_set(inputs, self.store)
        self.reference = training.reference
        return train_lora(
            training, inputs.config.train, inputs.profile, inputs.backend, inputs.config.pod, return_state=True
        )


class TrainingInputs(NamedTuple):
    """A `likeness train` run's checked inputs: the training folder's images, the reference, the spec, the pod."""

    trigger: str
    images: list[TrainingImage]
    reference: ReferenceImage | None
    identity_checked: bool
    profile: ModelProfile
    config: RunConfig
    backend: str

    def identity(self) -> dict[str, Any]:
        """What must match for a train run to share an output folder: all that decides the LoRA."""
        images = [
            [str(picture.image.name), file_sha256(picture.image), picture.caption]
            + ([file_sha256(picture.mask)] if picture.mask else [])
            for picture in self.images
        ]
        return {
            "format": RECORD_FORMAT,
            "command": "train",
            "trigger": self.trigger,
            "training_set": hashlib.sha256(json.dumps(images).encode()).hexdigest(),
            "reference_sha256": self.reference.original_sha256 if self.reference else None,
            "identity_checked": self.identity_checked,
            "profile": {"name": self.profile.name, **self.profile.output_identity()},
            "train": self.config.train.model_dump(mode="json"),
            "backend": self.backend,
        }


def upload_training_set(inputs: TrainingInputs, store: ArtifactStore) -> TrainingSet:
    """The training folder's images, captions and masks, and the reference, in the store."""
    from likeness.storage.artifacts import put_file

    root = Path(os.path.commonpath([picture.image.parent for picture in inputs.images]))
    items = tuple(
        TrainingItem(
            filename=str(picture.image.relative_to(root)),
            image=put_file(picture.image, store=store),
            caption=picture.caption,
            mask=put_file(picture.mask, store=store) if picture.mask else None,
        )
        for picture in inputs.images
    )
    reference = put_bytes(inputs.reference.png, "reference.png", store) if inputs.reference else None
    return TrainingSet(
        trigger=inputs.trigger, items=items, reference=reference, identity_checked=inputs.identity_checked
    )


DatasetFolder = Annotated[
    Path | None, typer.Option("--dataset", help="A training folder: images with same-stem .txt captions.")
]
FromOut = Annotated[
    Path | None,
    typer.Option("--from", help="The output folder of a `likeness dataset` or `produce` run: its dataset/ and masks/."),
]
MasksFolder = Annotated[
    Path | None, typer.Option("--masks", help="Loss masks of the --dataset images (same stems; white = trained on).")
]
ScoringReference = Annotated[
    Path | None,
    typer.Option(
        "--image", help="The reference photo checkpoints are scored against (default: --from's reference.png)."
    ),
]
GpuTypes = Annotated[
    list[str] | None,
    typer.Option("--gpu", help="A RunPod GPU type to ask for, in order of preference (repeatable); pod.gpu_types."),
]
PrintConfig = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the AI Toolkit YAML or our trainer's job that would be sent, and the pod with its price; "
        "start nothing.",
    ),
]


@app.command()
def train(
    name: Name,
    dataset: DatasetFolder = None,
    from_out: FromOut = None,
    masks: MasksFolder = None,
    image: ScoringReference = None,
    no_identity: Annotated[
        bool, typer.Option("--no-identity", help="Do not score checkpoints by face identity (a stylised character).")
    ] = False,
    profile: Profile = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: likeness-out/<name>-lora).")] = None,
    overrides: Overrides = None,
    refresh: Refresh = False,
    beyond_limits: BeyondLimits = False,
    verbose: Verbose = False,
    backend: TrainBackend = "local",
    gpu: GpuTypes = None,
    print_config: PrintConfig = False,
) -> None:
    """Train the character LoRA on a training folder (here or on a RunPod pod) and pick its best checkpoint."""
    settings = get_settings()
    try:
        inputs = _training_inputs(
            name, dataset, from_out, masks, image, no_identity, profile, overrides, beyond_limits, backend, gpu
        )
        from likeness.models.profiles import device_for
        from likeness.training.remote import job_file
        from likeness.training.spec import TrainJob

        device = device_for(inputs.profile, settings)
        job = TrainJob.for_profile(inputs.trigger, inputs.config.train, inputs.profile, device)
        # Also the check that the backend can train this spec at all (AI Toolkit and a tiny model, say).
        sent = job_file(job, inputs.backend, inputs.config.train.masks)
        if print_config:
            _print_training_config(inputs, device, sent)
            return
        _checked_backend(inputs.backend)
        out = out or Path("likeness-out") / f"{inputs.trigger}-lora"
        identity = inputs.identity()
        key = hashlib.sha256(json.dumps({"identity": identity, "likeness": __version__}).encode()).hexdigest()
        record = check_output_folder(out, identity)
        if not refresh and is_up_to_date(out, record, key):
            _say(f"{inputs.trigger}: {out} is up to date (same training folder, profile and settings)")
            return
        if inputs.backend == "local":
            preflight(inputs.profile, settings)
        store = get_store()
        check_out_location(out, settings, store)
        checkpoints = inputs.config.train.checkpoint_count * lora_checkpoint_bytes(
            inputs.config, video_transformer_config(inputs.profile, settings)
        )
        check_writable(out, store, (2 * checkpoints, checkpoints))
    except (InvalidInput, ProfileUnavailable, OutputConflict, StoreError, WriteCheckFailed) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(describe_failure(exc))
    TrainRun(inputs, out, key, store, settings).start(refresh, verbose)


def _training_inputs(
    name: str,
    dataset: Path | None,
    from_out: Path | None,
    masks: Path | None,
    image: Path | None,
    no_identity: bool,
    profile: str | None,
    overrides: list[str] | None,
    beyond_limits: bool,
    backend: str,
    gpu: list[str] | None,
) -> TrainingInputs:
    """Check a train run's inputs, before Prefect starts and before any pod is asked for."""
    trigger = normalise_trigger(name)
    if (dataset is None) == (from_out is None):
        raise InvalidInput("give the training images as --dataset DIR or --from OUT (the output of `likeness dataset`)")
    if from_out is not None:
        record = read_record(from_out)
        if record is None:
            raise InvalidInput(f"--from {from_out} holds no {MANIFEST}: it is not a Likeness output folder")
        if record["identity"].get("trigger") != trigger:
            raise InvalidInput(
                f"--from {from_out} holds the dataset of {record['identity'].get('trigger')!r}, whose captions use "
                f"that trigger word; train it as {record['identity'].get('trigger')!r}"
            )
        if masks is not None:
            raise InvalidInput(f"--masks is for --dataset; --from uses {from_out / 'masks'}")
        dataset = from_out / "dataset"
        masks = from_out / "masks" if (from_out / "masks").is_dir() else None
        image = image or (from_out / REFERENCE if (from_out / REFERENCE).is_file() else None)
        profile = profile or record["identity"]["profile"]["name"]
    assert dataset is not None
    model_profile = load_profile(profile or get_settings().profile)
    assignments = parse_overrides(overrides or [])
    if gpu:
        assignments.setdefault("pod", {})["gpu_types"] = gpu
    config = RunConfig.from_profile(model_profile, assignments, beyond_limits=beyond_limits)
    if config.train.masks and masks is None:
        _say(f"note: no mask folder for {dataset}, so every pixel counts in the loss (--masks DIR to give one)")
        config = config.model_copy(update={"train": config.train.model_copy(update={"masks": False})})
    images = read_training_folder(dataset, masks if config.train.masks else None)
    if not any(trigger.lower() in picture.caption.lower() for picture in images):
        _say(f"warning: no caption in {dataset} holds the trigger word {trigger!r}; the LoRA will not answer to it")
    reference = None
    if image is not None and not no_identity:
        reference = read_reference_image(image)
        warning = check_reference_face(reference, str(image), True)
        if warning:
            _say(f"warning: {warning}")
    elif not no_identity:
        _say("note: no reference photo (--image), so the checkpoints are not scored and the last one is the LoRA")
    return TrainingInputs(
        trigger, images, reference, not no_identity, model_profile, config, _checked_backend(backend, quiet=True)
    )


def _print_training_config(inputs: TrainingInputs, device: str, sent: tuple[str, str]) -> None:
    """What would be sent (on stdout) and the pod it would ask for, with prices from the API (on stderr)."""
    from likeness.runpod.pods import RunPodError
    from likeness.training.remote import DEFAULT_IMAGES, runpod_client

    pod = inputs.config.pod
    path, text = sent
    _say(f"# {path}: what the {inputs.backend} backend trains {len(inputs.images)} images with")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    if inputs.backend == "local":
        _say(f"# trains on this machine ({device}); no pod")
        return
    _say(
        f"# pod: image {pod.image or DEFAULT_IMAGES[inputs.backend]}, {pod.cloud_type} cloud, "
        f"{pod.container_disk_gb} GB disk, terminated after {pod.ttl_hours:g} h at the latest"
    )
    if not get_settings().runpod_api_key:
        _say("# GPU types in order of preference (set LIKENESS_RUNPOD_API_KEY to see their prices):")
        for gpu_type in pod.gpu_types:
            _say(f"#   {gpu_type}")
        return
    try:
        prices = runpod_client().gpu_prices(pod.gpu_types, pod.cloud_type)
    except RunPodError as exc:
        _fail(str(exc))
    _say("# GPU types in order of preference; the first with room is taken:")
    for gpu_type in pod.gpu_types:
        price = prices.get(gpu_type)
        _say(f"#   {gpu_type}: " + (f"${price:.2f}/h" if price else f"not offered on {pod.cloud_type}"))


class RenderInputs(NamedTuple):
    """A `likeness render` run's checked inputs: the LoRA files, the reference, the prompts and the settings."""

    trigger: str
    lora_files: list[Path]
    step: int
    reference: ReferenceImage | None
    prompts: list[PromptEntry] | None
    profile: ModelProfile
    config: RunConfig
    beyond_limits: bool
    # `--animate`: the still (as PNG) and the video prompt it comes to life with.
    still_png: bytes | None = None
    animate_prompt: str | None = None


class RenderRun(FlowRun):
    """One `likeness render` run: renders of a trained character, added to its output folder."""

    def __init__(self, inputs: RenderInputs, out: Path, store: ArtifactStore, settings: Settings) -> None:
        super().__init__(inputs.trigger, out, {}, "", store, settings)
        self.inputs = inputs
        # The record entries of the renders this run made, once exported.
        self._made: list[dict[str, Any]] = []

    def _finish(self, manifest: dict[str, Any]) -> None:
        table = Table(title=f"{self.trigger} -> {self.out}")
        for column in ("render", "faces / frames", "identity (best)", "identity (median)"):
            table.add_column(column)
        for entry in self._made:
            best, median = entry.get("identity_distance"), entry.get("identity_median")
            table.add_row(
                entry["file"],
                f"{entry['faces_found']} / {entry['frames_scored']}" if entry["frames_scored"] else "not scored",
                "" if best is None else f"{best:.3f}",
                "" if median is None else f"{median:.3f}",
            )
        Console().print(table)

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


UPSCALE_SIZES = {"4k": 3840, "1440p": 2560, "1080p": 1920}
# A still is resized to the render's size; below this it holds no face to animate.
STILL_MIN_SIDE = 32


@app.command("render")
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
    try:
        inputs = _render_inputs(
            name, from_out, prompts, images, videos, frames, fx, upscale, image, profile, overrides, beyond_limits
        )
        if animate is not None:
            # Only the still comes to life unless other renders are asked for too.
            inputs = _with_still(inputs if prompts or images or videos else inputs._replace(prompts=[]), animate)
        roles: list[Role] = ["video", *(["animator"] if animate else [])]
        preflight(inputs.profile, settings, roles)
        store = get_store()
        check_writable(from_out, store, (0, 0))
    except (InvalidInput, ProfileUnavailable, OutputConflict, StoreError, WriteCheckFailed) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(describe_failure(exc))
    RenderRun(inputs, from_out, store, settings).start(refresh, verbose)


def _render_inputs(
    name: str,
    out: Path,
    prompts_file: Path | None,
    images: int | None,
    videos: int | None,
    frames: int | None,
    fx: str | None,
    upscale: str | None,
    image: Path | None,
    profile: str | None,
    overrides: list[str] | None,
    beyond_limits: bool,
) -> RenderInputs:
    """Check a render run's inputs before Prefect starts and before any model loads."""
    from likeness.render.prompts import read_prompts_file

    trigger = normalise_trigger(name)
    record = read_record(out)
    if record is None or not record.get("lora"):
        raise InvalidInput(f"--from {out} holds no trained LoRA (no lora entries in its {MANIFEST})")
    if record["identity"].get("trigger") != trigger:
        raise InvalidInput(f"--from {out} holds the LoRA of {record['identity'].get('trigger')!r}, not {trigger!r}")
    best = next((entry for entry in record["lora"] if entry.get("best")), record["lora"][-1])
    lora_files = [out / file for file in best.get("published_as", best["files"])]
    missing = [str(path) for path in lora_files if not path.is_file()]
    if missing:
        raise InvalidInput(f"--from {out}: the LoRA file {', '.join(missing)} is gone")
    check_lora_files(lora_files, load_profile(profile or record["identity"]["profile"]["name"]))
    if prompts_file is not None and (images or videos):
        raise InvalidInput("give --prompts FILE or --images/--videos N, not both")
    model_profile = load_profile(profile or record["identity"]["profile"]["name"])
    assignments = parse_overrides(overrides or [])
    render_settings = assignments.setdefault("render", {})
    if frames is not None:
        render_settings["video_frames"] = frames
    if fx is not None:
        render_settings["fx"] = fx
    if upscale is not None:
        if upscale not in UPSCALE_SIZES:
            raise InvalidInput(f"--upscale {upscale!r} is not one of {', '.join(UPSCALE_SIZES)}")
        render_settings["upscale_long_side"] = UPSCALE_SIZES[upscale]
    config = RunConfig.from_profile(model_profile, assignments, beyond_limits=beyond_limits)
    entries: list[PromptEntry] | None = None
    if prompts_file is not None:
        entries = read_prompts_file(prompts_file)
    elif images or videos:
        entries = _prompt_variations(CharacterPrompt(trigger=trigger), images or 0, videos or 0, config.render.seed)
    from likeness.render.jobs import plan_renders

    plan_renders(config.render, trigger, entries, model_profile.limits.render, beyond_limits)
    reference_path = image or (out / REFERENCE if (out / REFERENCE).is_file() else None)
    reference = read_reference_image(reference_path) if reference_path else None
    if reference is None:
        _say("note: no reference photo (--image), so the renders are not scored")
    return RenderInputs(trigger, lora_files, best["step"], reference, entries, model_profile, config, beyond_limits)


def _with_still(inputs: RenderInputs, path: Path) -> RenderInputs:
    """The inputs with `--animate`'s still and its video prompt: the still's own prompt (a render carries it) with
    motion and camera added, else the character's first video prompt."""
    from likeness.render.prompts import video_prompt

    if "animator" not in inputs.profile.models:
        raise InvalidInput(f"--animate needs an image-to-video model, and profile {inputs.profile.name!r} names none")
    still = read_reference_image(path, "still to animate", min_side=STILL_MIN_SIDE)
    lineage = Image.open(path).info.get("likeness") if path.suffix.lower() == ".png" else None
    seed = inputs.config.render.seed
    if lineage:
        prompt = video_prompt(json.loads(lineage)["prompt"], seed)
    else:
        prompt = (
            render_template(inputs.config.render.video_prompts[0], trigger=inputs.trigger)
            if (inputs.config.render.video_prompts)
            else video_prompt(inputs.trigger, seed)
        )
    return inputs._replace(still_png=still.png, animate_prompt=prompt)


def check_lora_files(paths: list[Path], profile: ModelProfile) -> None:
    """Refuse a LoRA file that is not one, or not one for the profile's Wan transformer, reading only its header.

    The transformer is built on the meta device from its config on disk; where the weights are not here yet
    (a first run), the loader's own checks are what is left."""
    import torch
    from diffusers import WanTransformer3DModel

    from likeness.models.speed_loras import check_wan_lora_keys

    config = stored_video_transformer_config(profile, get_settings())
    if config is None:
        return
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(config)
    for path in paths:
        check_wan_lora_keys(path, transformer)


def _prompt_variations(character: CharacterPrompt, images: int, videos: int, seed: int) -> list[PromptEntry]:
    """`images` image prompts and `videos` video prompts (image prompts with motion and camera added), from the
    prompter LLM in the settings, or (unset, down, slow or talking nonsense) the seeded templates; which is said."""
    from likeness.render.llm import make_video_prompt, prompt_variations

    llm = _prompter()
    stills, source = prompt_variations(character, max(images, videos), seed, llm)
    entries = [PromptEntry(prompt=prompt, kind="image") for prompt in stills[:images]]
    sources = {source}
    for prompt in stills[:videos]:
        clip, clip_source = make_video_prompt(prompt, seed, llm)
        entries.append(PromptEntry(prompt=clip, kind="video"))
        sources.add(clip_source)
    if llm is not None and "templates" in sources:
        settings = get_settings()
        where = settings.prompter_url or settings.prompter_local
        _say(f"warning: the prompter {where} gave no usable prompts (see the log); using the seeded templates")
    return entries


def _prompter() -> Any:
    """The prompter the settings name: an OpenAI-compatible endpoint, a transformers model here, or None."""
    from likeness.render.llm import LlmSettings

    settings = get_settings()
    if settings.prompter_url:
        return LlmSettings(
            url=settings.prompter_url,
            model=settings.prompter_model,
            api_key=settings.prompter_api_key,
            timeout_s=settings.prompter_timeout_s,
        )
    if settings.prompter_local:
        from likeness.models.profiles import spec_path
        from likeness.render.local_llm import TransformersPrompter

        spec = ModelSpec(source=settings.prompter_local, licence="the model's own")
        return TransformersPrompter(spec_path("prompter", spec, settings))
    return None


def _print_summary(out: Path, manifest: dict[str, Any]) -> None:
    table = Table(title=f"{manifest['identity']['trigger']} -> {out}")
    table.add_column("what")
    table.add_column("files")
    if manifest["identity"].get("command") != "train":
        table.add_row("dataset", str(len(manifest["dataset"])))
    if manifest["lora"]:
        best = next((entry for entry in manifest["lora"] if entry.get("best")), manifest["lora"][-1])
        score = best.get("identity_distance")
        chosen = f"step {best['step']}" + (f", identity distance {score:.3f}" if score is not None else "")
        table.add_row("lora", f"{', '.join(best.get('published_as', best['files']))} ({chosen})")
        table.add_row("lora checkpoints", ", ".join(str(entry["step"]) for entry in manifest["lora"]))
    if manifest["renders"]:
        table.add_row("renders", "\n".join(entry["file"] for entry in manifest["renders"]))
    if not manifest["identity"].get("pulled"):  # a pulled run's models were loaded by its workers
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
def batch(
    manifest: Annotated[Path, typer.Argument(help="A .yaml or .csv manifest: name, image and optional columns.")],
    concurrency: Annotated[int, typer.Option(min=1, help="How many characters are produced at once.")] = 2,
    verbose: Verbose = False,
) -> None:
    """Produce every character of a manifest, at most `concurrency` at once; broken rows are reported by number."""
    from likeness.run.batch import ManifestProblem, read_manifest

    try:
        rows, problems = read_manifest(manifest)
    except ManifestProblem as exc:
        _fail(str(exc))
    for number, problem in problems:
        _say(f"skipped row {number}: {problem}")
    if not rows:
        _fail(f"no row of {manifest} can run")
    BatchRun(manifest, concurrency, get_store(), get_settings()).start(refresh=False, verbose=verbose)


class BatchRun(FlowRun):
    """One `likeness batch` run: the batch flow, against one Prefect server its `likeness produce` children share."""

    def __init__(self, manifest: Path, concurrency: int, store: ArtifactStore, settings: Settings) -> None:
        super().__init__(f"batch-{manifest.stem}", manifest.parent, {}, "", store, settings)
        self.manifest, self.concurrency = manifest, concurrency

    def _flow_state(self) -> Any:
        from flows.batch import produce_batch

        return produce_batch(str(self.manifest), self.concurrency, return_state=True)

    def _export(self, result: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
        return {"results": result}

    def _finish(self, manifest: dict[str, Any]) -> None:
        results = manifest["results"]
        _print_batch(f"batch {self.manifest}", results)
        if any(result["status"] not in ("produced", "up to date") for result in results):
            raise typer.Exit(1)


def _print_batch(title: str, results: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in ("row", "name", "status", "out"):
        table.add_column(column)
    for result in results:
        table.add_row(str(result["row"]), result["name"], result["status"], result["out"])
    Console().print(table)


@app.command()
def doctor() -> None:
    """Check this machine: GPU, artifact store, Prefect API, workers per pool, RunPod key (nothing secret shown)."""
    from likeness.run.doctor import run_checks

    settings = get_settings()
    checks = run_checks(settings, get_store, settings.work_pools)
    out = Console(soft_wrap=True, highlight=False)
    for check in checks:
        mark = {True: "[green]ok    [/]", False: "[bold red]failed[/]", None: "[dim]n/a   [/]"}[check.ok]
        out.print(f"{mark} {escape(check.name):<20} {escape(check.detail)}")
    if any(check.ok is False for check in checks):
        raise typer.Exit(1)


def _drain_prefect(timeout_s: float = 5.0) -> None:
    """Send Prefect's queued logs and events now, rather than warn about them at exit."""
    if "prefect" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout_s)
        EventsWorker.drain_all(timeout=timeout_s)


def _prefect_api(command: str) -> str:
    """The Prefect server a deployment command talks to; a clear error when none is configured."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        _fail(f"likeness {command} needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    return api


@app.command("deploy")
def deploy_command(
    gpu_slots: Annotated[int, typer.Option(min=1, help="GPU stage tasks at once, all GPU workers together.")] = 1,
    code_dir: Annotated[
        Path | None, typer.Option(help="Where the workers' checkout of Likeness is (default: this one).")
    ] = None,
) -> None:
    """Set up the Prefect server for Likeness: work pools, GPU limit, results storage and every deployment."""
    api = _prefect_api("deploy")
    from deployments.deploy import DeployFailed, deploy

    try:
        deployed = deploy(gpu_slots, code_dir)
    except (DeployFailed, StoreError) as exc:
        _fail(str(exc))
    table = Table(title=f"deployed to {api}")
    table.add_column("deployment")
    table.add_column("work pool")
    for name, pool in deployed:
        table.add_row(name, pool)
    Console().print(table)


DEPLOYMENT_NAMES = {
    "produce": "produce-character/produce",
    "dataset": "produce-dataset/dataset",
    "train": "train-character/train",
    "train-runpod": "train-character/train-runpod",
    "render": "render-character/render",
    "batch": "produce-batch/batch",
    "inbox": "produce-inbox/inbox",
    "sweep-pods": "sweep-pods/sweep-pods",
}


@app.command("run")
def run_command(
    deployment: Annotated[str, typer.Argument(help=f"One of {', '.join(DEPLOYMENT_NAMES)}, or flow/deployment.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A parameter as name=value (YAML values; repeatable).")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Follow the run: stages, progress, files at the end.")] = False,
    out: Annotated[Path | None, typer.Option(help="With --watch: the folder for the character's files.")] = None,
) -> None:
    """Start a run of a deployment; its logs go to the Prefect UI, the console shows only its progress."""
    _prefect_api("run")
    from likeness.run.deployed import follow_run, start_run

    name = DEPLOYMENT_NAMES.get(deployment, deployment)
    try:
        parameters = parse_overrides(param or [], "--param")
        flow_run = start_run(name, parameters)
    except InvalidInput as exc:
        _fail(str(exc))
    _say(f"started {name} run {flow_run.name} ({flow_run.id})")
    if not watch:
        _say(f"follow it with: likeness run ... --watch, or in the UI; its files: likeness pull {flow_run.id}")
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=console
    ) as bar:
        bars: dict[str, Any] = {}

        def on_progress(key: str, percent: float, description: str) -> None:
            if key not in bars:
                bars[key] = bar.add_task(key, total=100)
            bar.update(bars[key], completed=percent, description=escape(description or key))

        final = follow_run(flow_run.id, on_progress, lambda run, state: bar.console.print(f"{run}: {state}"))
    if not final.state.is_completed():
        _fail(f"{name} run {final.name} ended {final.state.name}: {final.state.message or 'see the Prefect UI'}")
    _say(f"{name} run {final.name} completed")
    flow_name = name.split("/")[0]
    if flow_name in ("produce-batch", "produce-inbox"):
        from likeness.run.deployed import completed_result

        _print_batch(f"{name} run {final.name}", completed_result(str(final.id))[1])
    elif flow_name in ("produce-character", "produce-dataset", "train-character", "render-character"):
        pull(str(final.id), out)


@app.command()
def pull(
    run: Annotated[str, typer.Argument(help="A produce or stage run: its flow run id or name.")],
    out: Out = None,
) -> None:
    """Copy what a run made for a character (dataset, LoRA, renders) from the artifact store into a folder."""
    _prefect_api("pull")
    from likeness.run.deployed import completed_result, stage_seconds

    try:
        flow_run, stored = completed_result(run)
        result = CharacterResult.model_validate(stored)
    except InvalidInput as exc:
        _fail(str(exc))
    except ValueError:
        _fail(f"run {run!r} made no character: pull takes a produce, dataset, train or render run")
    trigger = result.dataset.trigger
    out = out or Path("likeness-out") / trigger
    identity = {
        "format": RECORD_FORMAT,
        "trigger": trigger,
        "reference_sha256": result.dataset.reference.sha256,
        # Any later run of this character from this photo may be pulled into the same folder.
        "pulled": True,
    }
    stats = {
        "flow_run_id": str(flow_run.id),
        "seconds": round(flow_run.total_run_time.total_seconds(), 2),
        "stage_seconds": stage_seconds(flow_run.id),
    }
    try:
        check_output_folder(out, identity)
        manifest = export_outputs(result, out, identity, str(flow_run.id), get_store(), {**stats, "model_loads": {}})
    except (OutputConflict, StoreError) as exc:
        _fail(str(exc))
    _print_summary(out, manifest)


@app.command()
def estimate(
    name: Name,
    profile: Profile = None,
    gpu: Annotated[str, typer.Option(help="The GPU type to price the run on.")] = "H100",
    overrides: Overrides = None,
    catalogue: CatalogueFile = None,
    out: Annotated[
        Path | None, typer.Option(help="The character's output folder, for its last run's measured seconds.")
    ] = None,
) -> None:
    """What a character costs before a GPU is rented: evaluations, FLOPs, seconds, memory and dollars per stage."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # building the models on the meta device talks
    from likeness.estimate import roles
    from likeness.estimate.character import estimate_character
    from likeness.estimate.gpus import GPUS, price_per_hour
    from likeness.estimate.report import estimate_table, measured_against_estimate, measured_table
    from likeness.runpod.pods import RunPodError

    settings = get_settings()
    if gpu not in GPUS:
        _fail(f"--gpu {gpu!r} is not one of {', '.join(GPUS)}")
    try:
        trigger = normalise_trigger(name)
        model_profile = load_profile(profile or settings.profile)
        config = RunConfig.from_profile(model_profile, parse_overrides(overrides or []))
        run_catalogue = load_catalogue(catalogue)
        price = price_per_hour(GPUS[gpu], settings.runpod_api_key)
        roles.keep_counts_in(settings.estimate_counts_file)
        rows = estimate_character(model_profile, config, run_catalogue, GPUS[gpu], price)
    except (InvalidInput, RunPodError, ValueError) as exc:
        _fail(str(exc))
    title = f"{trigger}: {model_profile.name} profile on one {gpu} at ${price.usd_per_hour:.2f}/h ({price.source})"
    wide = Console(width=max(Console().width, 150))  # the table's ten columns, unwrapped, also when piped
    wide.print(estimate_table(rows, title))
    try:
        record = read_record(out or Path("likeness-out") / trigger) or {}
    except OutputConflict as exc:
        # The estimate stands without it: say why the last run's seconds are missing.
        console.print(f"no measured seconds: {escape(str(exc))}")
        return
    seconds = (record.get("last_run") or {}).get("stage_seconds")
    if record.get("estimate") and seconds:
        measured = measured_against_estimate(record["estimate"], seconds)
        wide.print(measured_table(measured, f"{trigger}: its last run, measured beside its estimate"))


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

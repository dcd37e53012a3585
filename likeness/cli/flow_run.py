"""Running one flow in this process for a command: Prefect, the progress bar, Ctrl-C, the export, the summary."""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from likeness.cli.console import console, fail, say
from likeness.run import progress
from likeness.run.errors import describe_failure
from likeness.run.interrupts import Interrupted, exit_now, interruptible
from likeness.run.outputs import OutputConflict
from likeness.run.prefect_server import ServerStartError, TemporaryPrefectServer
from likeness.run.runlog import log_file_path, route_logs
from likeness.settings import Settings
from likeness.storage.store import ArtifactStore, CorruptObject, MissingObject


def configure_environment(refresh: bool) -> None:
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
        self.text = ""
        self._bars: dict[str, Any] = {}
        self._printed: tuple[str, float] = ("", 0.0)

    def __call__(self, stage: str, done: int, total: int, text: str) -> None:
        self.stage, self.text = stage, text
        if console.is_terminal:
            if stage not in self._bars:
                self._bars[stage] = self.progress.add_task(stage, total=total)
            self.progress.update(self._bars[stage], completed=done, total=total, description=f"{stage} {text}")
            return
        # CI logs: a line when a stage starts or ends, and now and then in between.
        last_stage, last_time = self._printed
        now = time.monotonic()
        if stage != last_stage or done in (0, total) or now - last_time > self.PLAIN_EVERY_S:
            say(f"{stage} {text}")
            self._printed = (stage, now)

    def where(self) -> str:
        return f"{self.stage} ({self.text})" if self.text else self.stage


class FlowRun:
    """One run of a flow after its inputs were checked: Prefect, the flow, the export, how it ends."""

    def __init__(
        self, trigger: str, out: Path, identity: dict[str, Any], key: str, store: ArtifactStore, settings: Settings
    ) -> None:
        self.trigger, self.out, self.identity, self.key, self.store = trigger, out, identity, key, store
        self.log_path = log_file_path(settings.data_dir, trigger)
        self.server: TemporaryPrefectServer | None = None
        self.tracker: StageTracker | None = None
        self.exporting = False
        self._interrupts: list[Interrupted] = []

    def start(self, refresh: bool, verbose: bool) -> None:
        """Run to the end, or stop on Ctrl-C / SIGTERM saying what was interrupted."""
        configure_environment(refresh)
        try:
            with interruptible(on_forced_exit=self._say_interrupted) as self._interrupts:
                try:
                    self._run(verbose)
                except Interrupted as interrupt:
                    self._exit_interrupted(interrupt)
                except BaseException:
                    # However the run unwound after a signal (a connection cut, a library's own clean-up), it was
                    # interrupted, and the shell should hear 128 + the signal.
                    self._exit_if_interrupted()
                    raise
        except (OSError, ServerStartError) as exc:
            self._stop_server()
            fail(f"{describe_failure(exc)} (during {self._where()}); details in {self.log_path}")

    def _exit_interrupted(self, interrupt: Interrupted) -> None:
        exit_now(interrupt.exit_code, partial(self._say_interrupted, interrupt))

    def _exit_if_interrupted(self) -> None:
        if self._interrupts:
            self._exit_interrupted(self._interrupts[0])

    def _say_interrupted(self, interrupt: Interrupted) -> None:
        self._stop_server(drain_s=1.0)
        say(
            f"interrupted ({interrupt}) during {self._where()}; finished stages are cached: "
            "run the same command again to resume from them"
        )

    def _where(self) -> str:
        if self.exporting:
            return f"the export into {self.out}"
        return self.tracker.where() if self.tracker else "start-up"

    def _stop_server(self, drain_s: float = 5.0) -> None:
        """Send Prefect's queued logs and events, then stop the temporary server (a no-op against a running one)."""
        drain_prefect(drain_s)
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

            route_logs(self.log_path, verbose, say)
            with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: save_results_block()}):
                manifest = self._run_and_export()
        finally:
            self._stop_server()
        self._finish(manifest)

    def _finish(self, manifest: dict[str, Any]) -> None:
        print_summary(self.out, manifest)

    def _run_and_export(self) -> dict[str, Any]:
        """Run the flow and export; a corrupt artifact met on the way is moved aside and remade by one more run."""
        try:
            return self._attempt()
        except CorruptObject as exc:
            say(f"{exc}: running it now")
        try:
            return self._attempt()
        except CorruptObject as exc:
            fail(str(exc))

    def _attempt(self) -> dict[str, Any]:
        from likeness.models import pipelines

        self.exporting = False
        started = time.perf_counter()
        result, flow_run_id = self._result()
        stats = {
            "flow_run_id": flow_run_id,
            "seconds": round(time.perf_counter() - started, 2),
            "model_loads": dict(pipelines.load_counts),
        }
        # A disk that fills up from here on fills up in the export, not in the flow's last stage.
        self.exporting = True
        try:
            manifest = self._export(result, stats)
        except (OutputConflict, MissingObject) as exc:
            fail(str(exc))
        self.exporting = False
        return manifest

    def _result(self) -> tuple[Any, str]:
        """The flow's result and run id; a failure that is a file-system or store problem is raised as such."""
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
            self.tracker = StageTracker(bar)
            progress.add_listener(self.tracker)
            progress.add_announcer(say)
            try:
                state = self._flow_state()
            finally:
                progress.remove_listener(self.tracker)
                progress.remove_announcer(say)
        if state.is_completed():
            return state.result(), str(state.state_details.flow_run_id)
        # A signal can end the flow Crashed where Prefect caught it: that is an interruption, not a failure.
        self._exit_if_interrupted()
        if state.is_cancelling() or state.is_cancelled():
            self._mark_cancelled(state)
            fail(
                f"the run was cancelled (from the Prefect UI or API) during {self._where()}; details in {self.log_path}"
            )
        cause = state.result(raise_on_failure=False)
        if isinstance(cause, OSError | CorruptObject):
            raise cause
        failure = describe_failure(cause)
        fail(f"the run ended {state.name} during {self._where()}: {failure}; details in {self.log_path}")

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


def drain_prefect(timeout_s: float = 5.0) -> None:
    """Send Prefect's queued logs and events now, rather than warn about them at exit."""
    if "prefect" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=timeout_s)
        EventsWorker.drain_all(timeout=timeout_s)


def print_summary(out: Path, manifest: dict[str, Any]) -> None:
    table = Table(title=f"{manifest['identity']['trigger']} -> {out}")
    table.add_column("what")
    table.add_column("files")
    if manifest["identity"].get("command") != "train":
        files = manifest["dataset"]
        images = sum(not name.endswith(".txt") for name in files)
        table.add_row("dataset", f"{images} images, {len(files) - images} captions")
    if manifest["lora"]:
        best = next((entry for entry in manifest["lora"] if entry.get("best")), manifest["lora"][-1])
        score = best.get("identity_distance")
        chosen = f"step {best['step']}" + (f", identity distance {score:.3f}" if score is not None else "")
        table.add_row("lora", f"{', '.join(best.get('published_as', best['files']))} ({chosen})")
        table.add_row("lora checkpoints", ", ".join(str(entry["step"]) for entry in manifest["lora"]))
        stop = next((entry for entry in manifest["lora"] if "stopped_early" in entry), None)
        if stop:
            table.add_row("stopped early", f"at step {stop['step']}: {stop['stopped_early']}")
    if manifest["renders"]:
        table.add_row("renders", "\n".join(entry["file"] for entry in manifest["renders"]))
    if not manifest["identity"].get("pulled"):  # a pulled run's models were loaded by its workers
        loads = manifest["last_run"]["model_loads"]
        table.add_row(
            "models loaded", ", ".join(f"{role} x{count}" for role, count in loads.items()) or "none (all cached)"
        )
    table.add_row("seconds", str(manifest["last_run"]["seconds"]))
    Console().print(table)

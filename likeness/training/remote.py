"""Training on a RunPod pod: start it, hand it its job, follow its progress, publish its checkpoints, end it.

The driver runs on a cheap CPU machine (a flow's process). It writes the pod's manifest of presigned URLs into
the store under `runpod-jobs/<job id>/`, starts a pod of the first GPU type with capacity, and polls the pod's
progress record. Every checkpoint the pod uploads is downloaded, checked (complete safetensors, the sha256 the pod
reported) and published into the content-addressed store as it arrives. The pod is terminated in every case:
success, failure, a stop asked for (Ctrl-C, cancellation from the Prefect UI), an error in the driver. A pod lost
mid-training is replaced and resumes from the last published checkpoint and its optimizer state. A driver that
dies without unwinding (SIGKILL, the OOM killer, a closed laptop) leaves a heartbeat that stops changing: the pod's
own watchdog (`likeness.training.watchdog.Watchdog`) ends the pod `pod.driver_timeout_s` later, and at `pod.ttl_hours`
whatever happens; the sweeper (`sweep_pods`) terminates what is left. Before its first pod, a job sweeps the pods
of this store's jobs that outlived their driver.

    result = RemoteTraining(job, "runpod-native", images, config.pod, client, store).run()
"""

from __future__ import annotations

import json
import logging
import shlex
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from likeness import __version__
from likeness.config import PodConfig
from likeness.inputs import InvalidInput
from likeness.models.wan_lora import is_complete_safetensors
from likeness.records import EarlyStop, TrainCost
from likeness.runpod.jobs import job_prefix, new_job_id, pod_name
from likeness.runpod.pods import Pod, PodRequest, RunPodClient, RunPodError
from likeness.runpod.sweep import ORPHAN_AFTER_S, sweep_pods
from likeness.settings import get_settings
from likeness.storage.artifacts import ArtifactRef, get_store, put_bytes, put_file
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore, StoreError
from likeness.training.aitoolkit import aitoolkit_checkpoint_names, aitoolkit_yaml
from likeness.training.heartbeat import DriverHeartbeat, heartbeat_every_s
from likeness.training.spec import OPTIMIZER_STATE, SAMPLES_FOLDER, TrainJob
from likeness.training.wheel import build_wheel

log = logging.getLogger(__name__)

RemoteBackend = Literal["runpod-aitoolkit", "runpod-native"]
# Our worker image (deployments/Dockerfile) and AI Toolkit's RunPod template image.
DEFAULT_IMAGES = {"runpod-native": f"likeness/worker:{__version__}", "runpod-aitoolkit": "ostris/aitoolkit:latest"}
# Installs the job's Likeness wheel over the image's dependencies, runs the agent, then idles until terminated
# (a pod whose command exits is restarted by RunPod, which would train again).
BOOTSTRAP = (
    'set -e; W="${LIKENESS_WORKSPACE:-/workspace/likeness}"; mkdir -p "$W"; cd "$W"; W="$PWD"; '
    "python -c \"import os, urllib.request; urllib.request.urlretrieve(os.environ['LIKENESS_WHEEL_URL'], "
    "'likeness-{version}-py3-none-any.whl')\"; "
    "python -m pip install -q --no-deps --target code likeness-{version}-py3-none-any.whl; "
    'PYTHONPATH="$W/code" LIKENESS_WORKSPACE="$W" python -m likeness.training.pod || true; '
    "exec sleep infinity"
)


class TrainingFailed(RuntimeError):
    """The trainer on the pod failed; the message holds the end of its log."""


class TrainingStopped(RuntimeError):
    """Training was stopped (Ctrl-C, or cancelled from the Prefect UI); the pod is terminated."""


class PublishedCheckpoint(BaseModel):
    """A checkpoint the pod uploaded, checked and copied into the content-addressed store."""

    model_config = ConfigDict(frozen=True)

    step: int
    loss: float | None
    files: tuple[ArtifactRef, ...]
    optimizer: ArtifactRef | None
    samples: tuple[ArtifactRef, ...]


class RemoteResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    checkpoints: tuple[PublishedCheckpoint, ...]
    cost: TrainCost
    stopped_early: EarlyStop | None = None


def runpod_client() -> RunPodClient:
    """A client with the key from settings (LIKENESS_RUNPOD_API_KEY), checked before anything is created."""
    client = RunPodClient(get_settings().runpod_api_key)
    client.check_key()
    return client


def check_remote_store() -> S3Store:
    """The store, if a pod can reach it: presigned URLs need S3-compatible storage."""
    store = get_store()
    if not isinstance(store, S3Store):
        raise InvalidInput(
            f"the RunPod backends need an S3-compatible store a pod can reach (LIKENESS_STORE_URI=s3://bucket/prefix "
            f"and LIKENESS_S3_ENDPOINT); the store is {store.uri}"
        )
    return store


def job_file(job: TrainJob, backend: str, masks: bool) -> tuple[str, str]:
    """The file that tells a pod's trainer what to train: AI Toolkit's `config.yaml`, or our trainer's `job.json`."""
    if backend == "runpod-aitoolkit":
        return "config.yaml", aitoolkit_yaml(job, "dataset", "masks" if masks else None, "output")
    return "job.json", job.model_dump_json(indent=2)


class RemoteTraining:
    """One training job on RunPod, from the first pod to the last checkpoint."""

    def __init__(
        self,
        job: TrainJob,
        backend: RemoteBackend,
        dataset: list[tuple[str, ArtifactRef | str]],
        pod: PodConfig,
        client: RunPodClient,
        store: ArtifactStore,
        on_progress: Callable[[int, int, float | None, str], None] | None = None,
        check_stop: Callable[[], None] | None = None,
        flow_run_id: str | None = None,
    ) -> None:
        self.job, self.backend, self.dataset, self.pod, self.client, self.store = (
            job,
            backend,
            dataset,
            pod,
            client,
            store,
        )
        self.on_progress, self.check_stop, self.flow_run_id = on_progress, check_stop, flow_run_id
        self.job_id = new_job_id()
        self.prefix = job_prefix(self.job_id)
        self.expires = timedelta(hours=pod.ttl_hours)
        self.published: dict[int, PublishedCheckpoint] = {}
        self.stopped_early: dict[str, Any] | None = None  # where our trainer stopped early, as its last report says
        self.heartbeat = DriverHeartbeat(store, self.prefix, pod, flow_run_id)
        # Each pod started and the seconds it ran: what the job cost.
        self.pod_times: list[tuple[Pod, float]] = []
        # The files each checkpoint is on the pod: AI Toolkit saves the last one without a step in its name.
        experts = job.config.trained_experts
        self.pod_files: dict[int, tuple[str, ...]] = (
            aitoolkit_checkpoint_names(job)
            if backend == "runpod-aitoolkit"
            else {step: tuple(job.checkpoint_filename(step, e) for e in experts) for step in job.checkpoint_steps()}
        )

    # The job's files -------------------------------------------------------------------------------------------

    def _url(self, key: str, method: Literal["GET", "PUT"] = "GET") -> str:
        return self.store.presigned_url(key, expires=self.expires, method=method)

    def _training_folder(self) -> str:
        # AI Toolkit writes into <training_folder>/<name>/.
        return f"output/{self.job.name}" if self.backend == "runpod-aitoolkit" else "training"

    def manifest(self, attempt: int) -> dict[str, Any]:
        """What the pod may read and write, as presigned URLs for exactly this job."""
        job, out = self.job, f"{self.prefix}out/"
        files: list[dict[str, str]] = []
        for path, source in self.dataset:
            files.append(
                {"path": path, "text": source}
                if isinstance(source, str)
                else {"path": path, "url": self._url(source.key)}
            )
        masks = job.config.masks and any(path.startswith("masks/") for path, _ in self.dataset)
        path, text = job_file(job, self.backend, masks)
        files.append({"path": path, "text": text})
        folder = self._training_folder()
        # The newest checkpoint with its optimizer state (its moments and RNG resume too), else the newest.
        ranked = sorted(self.published.values(), key=lambda c: (c.optimizer is not None, c.step))
        if ranked:
            checkpoint = ranked[-1]
            for ref in checkpoint.files:
                files.append({"path": f"{folder}/{ref.filename}", "url": self._url(ref.key)})
            if checkpoint.optimizer:
                files.append({"path": f"{folder}/{OPTIMIZER_STATE}", "url": self._url(checkpoint.optimizer.key)})
        # Our trainer scores the samples so far when it resumes, so its count goes on where the lost pod's was.
        so_far = [ref for c in self.published.values() for ref in c.samples] if job.config.stop_when_flat else []
        files += [{"path": f"{folder}/{SAMPLES_FOLDER}/{ref.filename}", "url": self._url(ref.key)} for ref in so_far]
        names = [name for step_names in self.pod_files.values() for name in step_names]
        samples = [f"sample_{s:09d}_{i}" for s in job.sampled_steps() for i in range(len(job.config.sample_prompts))]
        return {
            "backend": "aitoolkit" if self.backend == "runpod-aitoolkit" else "native",
            "name": job.name,
            "total_steps": job.config.steps,
            "training_folder": folder,
            "progress_every_s": min(self.pod.poll_seconds, 30.0),
            # The pod waits out a store outage for half the silence after which this driver takes it as lost.
            "upload_patience_s": self.pod.silent_after_s / 2,
            "files": files,
            # What the pod's watchdog reads, and when it ends the pod (see likeness.training.pod.DriverWatch).
            "watchdog": {
                "heartbeat": self._url(self.heartbeat.key),
                "driver_timeout_s": self.pod.driver_timeout_s,
                "check_every_s": heartbeat_every_s(self.pod),
                "ttl_s": self.pod.ttl_hours * 3600,
            },
            "uploads": {
                "checkpoints": {name: self._url(f"{out}{name}", "PUT") for name in names},
                "optimizer": {
                    f"optimizer_{s:09d}.pt": self._url(f"{out}optimizer_{s:09d}.pt", "PUT")
                    for s in job.checkpoint_steps()
                },
                "samples": {key: self._url(f"{out}{key}.png", "PUT") for key in samples},
                "progress": self._url(f"{self.prefix}progress-{attempt}.json", "PUT"),
                "log": self._url(f"{self.prefix}log-{attempt}.txt", "PUT"),
            },
        }

    # The pod ---------------------------------------------------------------------------------------------------

    def run(self) -> RemoteResult:
        """Train to the last step on as many pods as it takes (one, unless a pod is lost)."""
        self._sweep_orphans()
        with tempfile.TemporaryDirectory() as tmp:
            wheel = put_file(build_wheel(Path(tmp)), store=self.store)
        for attempt in range(self.pod.max_replacements + 1):
            if self._attempt(attempt, wheel):
                return self._result()
            log.warning(
                "pod lost at step %s; starting another from the last checkpoint", max(self.published, default=0)
            )
        raise TrainingFailed(
            f"{self.pod.max_replacements + 1} pods were lost before training finished "
            f"(last checkpoint: step {max(self.published, default=0)}); see {self.prefix} in the store"
        )

    def _sweep_orphans(self) -> None:
        """Terminate the pods of this store's jobs whose driver is gone (their watchdog may have failed them)."""
        try:
            sweep_pods(
                self.client,
                self.store,
                self.pod.ttl_hours,
                max(ORPHAN_AFTER_S, self.pod.driver_timeout_s),
                only_this_store=True,
            )
        except (RunPodError, StoreError) as error:
            log.warning("could not sweep pods left behind by earlier jobs (%s); going on", error)

    def pod_request(self, manifest: ArtifactRef, wheel: ArtifactRef) -> PodRequest:
        """The pod to ask for: its env holds two presigned GET URLs and the job id, never a key."""
        env = {
            "LIKENESS_JOB_URL": self._url(manifest.key),
            "LIKENESS_WHEEL_URL": self._url(wheel.key),
            "LIKENESS_JOB_ID": self.job_id,
        }
        return PodRequest(
            name=pod_name(self.job_id),
            image=self.pod.image or DEFAULT_IMAGES[self.backend],
            gpu_types=self.pod.gpu_types,
            cloud_type=self.pod.cloud_type,
            container_disk_gb=self.pod.container_disk_gb,
            volume_gb=0,
            env=env,
            docker_args=f"bash -c {shlex.quote(BOOTSTRAP.replace('{version}', __version__))}",
        )

    def _attempt(self, attempt: int, wheel: ArtifactRef) -> bool:
        """One pod's life; True when training finished on it, False when the pod was lost."""
        manifest_ref = put_bytes(json.dumps(self.manifest(attempt)).encode(), f"manifest-{attempt}.json", self.store)
        request = self.pod_request(manifest_ref, wheel)
        # Before the pod exists, so that its watchdog finds a heartbeat from its first read.
        self.heartbeat.write(None)
        try:
            pod = self.client.start_pod(request)
        except BaseException:
            with suppress(StoreError):  # the error that matters is the start's
                self.heartbeat.write(None, done=True)
            raise
        started = time.monotonic()
        try:
            self.heartbeat.write(pod.id)
            with self.heartbeat.beating(pod.id):
                return self._follow(pod.id, attempt)
        finally:
            self.client.terminate(pod.id)
            self.pod_times.append((pod, time.monotonic() - started))
            self.heartbeat.write(None, done=True)

    def _follow(self, pod_id: str, attempt: int) -> bool:
        """Poll the pod's progress and publish its checkpoints until it finishes, fails or is lost."""
        last_report = time.monotonic()
        seen_time = None
        while True:
            if self.check_stop:
                try:
                    self.check_stop()
                except BaseException as stop:
                    raise TrainingStopped(f"training stopped ({stop}); pod {pod_id} terminated") from stop
            progress = self._progress(attempt)
            if progress and progress["time"] != seen_time:
                last_report = time.monotonic()
                try:
                    self._publish(progress["uploaded"], progress["loss"])
                except StoreError as error:
                    # The store stopped answering between the report and its files: publish at the next poll.
                    log.warning("publishing pod %s's checkpoints waits for the store: %s", pod_id, error)
                    time.sleep(self.pod.poll_seconds)
                    continue
                seen_time = progress["time"]
                if self.on_progress:
                    self.on_progress(progress["step"], progress["total"], progress["loss"], progress["status"])
                if progress["status"] == "done":
                    self.stopped_early = progress.get("stopped_early")
                    return True
                if progress["status"] == "failed":
                    tail = "\n".join(progress.get("log_tail", [])[-15:])
                    raise TrainingFailed(f"the trainer on pod {pod_id} failed (exit {progress['exit_code']}):\n{tail}")
            status = self.client.status(pod_id)
            if status is None or not status.is_running:
                # Gone or stopped: whatever it uploaded before that is already published.
                final = self._progress(attempt)
                if final and final["status"] == "done":
                    self._publish(final["uploaded"], final["loss"])
                    if self.on_progress and final["time"] != seen_time:  # it ended between two polls
                        self.on_progress(final["step"], final["total"], final["loss"], final["status"])
                    self.stopped_early = final.get("stopped_early")
                    return True
                return False
            if time.monotonic() - last_report > self.pod.silent_after_s:
                log.warning("pod %s reported nothing for %.0f s: taking it as lost", pod_id, self.pod.silent_after_s)
                return False
            time.sleep(self.pod.poll_seconds)

    def _progress(self, attempt: int) -> dict[str, Any] | None:
        key = f"{self.prefix}progress-{attempt}.json"
        # Not there yet (MissingObject), or caught mid-write: no report this time.
        try:
            return json.loads(self.store.get_bytes(key))
        except (StoreError, ValueError):
            return None

    # Publishing ------------------------------------------------------------------------------------------------

    def _publish(self, uploaded: dict[str, str], loss: float | None) -> None:
        """Check and copy into the store every checkpoint that is whole (all its experts' files), and the optimizer
        state and samples of each, which go up after it and may come with a later report."""
        job, out = self.job, f"{self.prefix}out/"
        for step, names in self.pod_files.items():
            known = self.published.get(step)
            if known is None:
                if not all(name in uploaded for name in names):
                    continue
                # Published under one naming whichever trainer wrote them: `<name>_<step>[_expert].safetensors`.
                canonical = [job.checkpoint_filename(step, e) for e in job.config.trained_experts]
                files = tuple(
                    self._checked(f"{out}{name}", final, uploaded[name])
                    for name, final in zip(names, canonical, strict=True)
                )
                known = PublishedCheckpoint(step=step, loss=loss, files=files, optimizer=None, samples=())
                log.info("published checkpoint step %s (%s)", step, ", ".join(f.filename for f in files))
            state = f"optimizer_{step:09d}.pt"
            optimizer = known.optimizer
            if optimizer is None and state in uploaded:
                optimizer = self._checked(f"{out}{state}", state, uploaded[state], tensors=False)
            keys = [
                (i, key) for i in range(len(job.config.sample_prompts)) if (key := f"sample_{step:09d}_{i}") in uploaded
            ]
            samples = known.samples
            if len(keys) != len(samples):
                samples = tuple(
                    self._checked(f"{out}{key}.png", job.sample_filename(step, i), uploaded[key], tensors=False)
                    for i, key in keys
                )
            self.published[step] = known.model_copy(update={"optimizer": optimizer, "samples": samples})

    def _checked(self, key: str, filename: str, sha256: str, tensors: bool = True) -> ArtifactRef:
        """The uploaded object as a content-addressed artifact, if it is whole and what the pod said it sent."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.store.get_file(key, Path(tmp) / filename)
            ref = put_file(path, filename, self.store)
            if ref.sha256 != sha256 or (tensors and not is_complete_safetensors(path)):
                raise TrainingFailed(f"{key}: the uploaded file is not what the pod wrote (sha256 or size differs)")
        return ref

    def _result(self) -> RemoteResult:
        last, _ = self.pod_times[-1]
        cost = TrainCost(
            gpu_type=last.gpu_type,
            cost_per_hr=last.cost_per_hr,
            pod_seconds=round(sum(seconds for _, seconds in self.pod_times), 1),
            dollars=round(sum(pod.cost_per_hr * seconds / 3600 for pod, seconds in self.pod_times), 4),
            pods=len(self.pod_times),
        )
        checkpoints = tuple(self.published[s] for s in sorted(self.published))
        return RemoteResult(checkpoints=checkpoints, cost=cost, stopped_early=self.stopped_early)

"""Train on RunPod: the thin Prefect driver of `likeness.training.remote`, with AI Toolkit or our trainer on a pod.

It runs on a CPU worker: the GPU is the pod's. The pod is terminated when training ends, fails, is stopped
(Ctrl-C, cancellation from the Prefect UI, which this task polls for) or the driver errs; a pod whose driver is
killed ends itself `pod.driver_timeout_s` later (its agent's watchdog), and the `sweep-pods` flow terminates
whatever is left.

    lora = fit_lora_on_runpod.fn(dataset, profile.train, profile, "runpod-native", PodConfig())
"""

from __future__ import annotations

import time

from likeness.config import ModelProfile, PodConfig, TrainConfig
from likeness.records import LoraCheckpoint, LoraRef, TrainingSet
from likeness.run.interrupts import check_stop
from likeness.run.progress import StageProgress
from likeness.stages import stage_task
from likeness.training.data import training_files
from likeness.training.remote import RemoteBackend, RemoteTraining, check_remote_store, runpod_client
from likeness.training.spec import TrainJob
from tasks.train import train_job

STAGE_VERSION = 2


class CancelledFromPrefect(RuntimeError):
    """The flow run was cancelled (from the UI or the API) while the pod trained."""


def _stop_if_cancelled() -> None:
    """Raise when this flow run is being cancelled, or the process interrupted."""
    check_stop()
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    flow_run_id = _flow_run_id()
    if flow_run_id is None:
        return
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
        raise CancelledFromPrefect(f"flow run {flow_run_id} was cancelled")


def _flow_run_id() -> str | None:
    from prefect.context import get_run_context

    task_run = getattr(get_run_context(), "task_run", None)
    return str(task_run.flow_run_id) if task_run and task_run.flow_run_id else None


class ProgressWithEta:
    """Pod progress (step, loss) as the stage's bar, with the time left at the pace so far."""

    def __init__(self, trigger: str, total: int) -> None:
        self.bar = StageProgress("train", total, f"{trigger}-train", unit="steps")
        self.started: tuple[float, int] | None = None

    def __call__(self, step: int, total: int, loss: float | None, status: str) -> None:
        now = time.monotonic()
        self.started = self.started or (now, step)
        detail = [status] + ([f"loss {loss:.4f}"] if loss is not None else [])
        first_time, first_step = self.started
        if step > first_step:
            left = (now - first_time) / (step - first_step) * (total - step)
            detail.append(f"ETA {left / 60:.0f} min" if left >= 60 else f"ETA {left:.0f} s")
        self.bar.advance(" ".join(detail), steps=step - self.bar.done)


def lora_from_remote(job: TrainJob, backend: RemoteBackend, training: RemoteTraining) -> LoraRef:
    result = training.run()
    checkpoints = tuple(LoraCheckpoint.from_files(c.step, c.loss, c.files, c.samples) for c in result.checkpoints)
    return LoraRef(
        trigger=job.trigger,
        base_model=job.model.source,
        base=job.config.base,
        backend=backend,
        checkpoints=checkpoints,
        cost=result.cost,
        stopped_early=result.stopped_early,
    )


@stage_task("fit-lora-on-runpod", STAGE_VERSION, retries=0, gpu=False)
def fit_lora_on_runpod(
    dataset: TrainingSet, config: TrainConfig, profile: ModelProfile, backend: RemoteBackend, pod: PodConfig
) -> LoraRef:
    """Train the character LoRA on a RunPod pod (AI Toolkit's image or our worker image)."""
    job = train_job(dataset.trigger, config, profile, dataset.reference)
    store = check_remote_store()
    client = runpod_client()
    training = RemoteTraining(
        job,
        backend,
        training_files(dataset, config.masks),
        pod,
        client,
        store,
        on_progress=ProgressWithEta(dataset.trigger, config.steps),
        check_stop=_stop_if_cancelled,
        flow_run_id=_flow_run_id(),
    )
    lora = lora_from_remote(job, backend, training)
    cost = lora.cost
    if cost:
        print(
            f"{dataset.trigger}: {cost.pods} pod(s) on {cost.gpu_type}, {cost.pod_seconds:.0f} s, ${cost.dollars:.2f}"
        )
    return lora

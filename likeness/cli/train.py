"""`likeness train`: the character LoRA from a training folder, here or on a RunPod pod."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from likeness.cli.console import fail, refusing, say
from likeness.cli.flow_run import FlowRun
from likeness.cli.options import (
    BeyondLimits,
    Name,
    Overrides,
    Profile,
    Refresh,
    ScoringReference,
    TrainBackend,
    Verbose,
)
from likeness.records import LoraRef
from likeness.run.outputs import export_lora_outputs
from likeness.run.prepare_train import (
    PreparedTraining,
    TrainingInputs,
    prepare_training,
    training_inputs,
    training_job_file,
    upload_training_set,
)
from likeness.settings import get_settings
from likeness.storage.artifacts import ArtifactRef

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
    with refusing():
        inputs = training_inputs(
            name, dataset, from_out, masks, image, no_identity, profile, overrides, beyond_limits, backend, gpu, say
        )
        device, sent = training_job_file(inputs, settings)
        if print_config:
            print_training_config(inputs, device, sent)
            return
        prepared = prepare_training(inputs, out, refresh, settings, say)
    if prepared is not None:
        TrainRun(prepared).start(refresh, verbose)


def print_training_config(inputs: TrainingInputs, device: str, sent: tuple[str, str]) -> None:
    """What would be sent (on stdout) and the pod it would ask for, with prices from the API (on stderr)."""
    from likeness.runpod.pods import RunPodError
    from likeness.training.remote import DEFAULT_IMAGES, runpod_client

    pod = inputs.config.pod
    path, text = sent
    say(f"# {path}: what the {inputs.backend} backend trains {len(inputs.images)} images with")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    if inputs.backend == "local":
        say(f"# trains on this machine ({device}); no pod")
        return
    say(
        f"# pod: image {pod.image or DEFAULT_IMAGES[inputs.backend]}, {pod.cloud_type} cloud, "
        f"{pod.container_disk_gb} GB disk, terminated after {pod.ttl_hours:g} h at the latest "
        f"({pod.driver_timeout_s:g} s after its driver's last heartbeat)"
    )
    if not get_settings().runpod_api_key:
        say("# GPU types in order of preference (set LIKENESS_RUNPOD_API_KEY to see their prices):")
        for gpu_type in pod.gpu_types:
            say(f"#   {gpu_type}")
        return
    try:
        prices = runpod_client().gpu_prices(pod.gpu_types, pod.cloud_type)
    except RunPodError as exc:
        fail(str(exc))
    say("# GPU types in order of preference; the first with room is taken:")
    for gpu_type in pod.gpu_types:
        price = prices.get(gpu_type)
        say(f"#   {gpu_type}: " + (f"${price:.2f}/h" if price else f"not offered on {pod.cloud_type}"))


class TrainRun(FlowRun):
    """One `likeness train` run: a LoRA from a training folder, written into its own output folder."""

    def __init__(self, prepared: PreparedTraining) -> None:
        inputs = prepared.inputs
        super().__init__(
            inputs.trigger, prepared.out, inputs.identity(), prepared.key, prepared.store, prepared.settings
        )
        self.inputs = inputs
        self.reference: ArtifactRef | None = None

    def _export(self, result: LoraRef, stats: dict[str, Any]) -> dict[str, Any]:
        return export_lora_outputs(result, self.out, self.identity, self.key, self.store, stats, self.reference)

    def _flow_state(self) -> Any:
        from flows.train import train_lora

        inputs = self.inputs
        training = upload_training_set(inputs, self.store)
        self.reference = training.reference
        # Trained here, the video model is here to probe the render strengths with; for a pod's LoRA this machine
        # need not hold it, and the renders keep their strengths.
        render = inputs.config.render if inputs.backend == "local" else None
        return train_lora(
            training, inputs.config.train, inputs.profile, inputs.backend, inputs.config.pod, render, return_state=True
        )

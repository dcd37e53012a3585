"""Our LoRA trainer: peft on the Wan transformer, or on both experts of Wan 2.2 A14B, each on its timestep range.

It runs in a flow's process (the `local` backend, with the process's loaded pipeline) and inside a RunPod pod
(`runpod-native`) without Prefect, the artifact store or any key. It writes AI Toolkit's training-folder layout,
so one agent publishes either trainer's work and a restarted job resumes the same way:

    <folder>/<name>_000000500.safetensors          the LoRA at step 500, original Wan key layout (A14B: one file
                                                   per expert, `_high_noise` / `_low_noise`)
    <folder>/optimizer.pt                          optimizer, RNG and step of the newest checkpoint
    <folder>/samples/<name>__000000500_0.png       one image per sample prompt, fixed seeds

Each dataset image is one frame. VAE latents and text embeddings are computed once, before the first step
(`likeness.training.examples`), and the text encoder then waits in CPU memory. The loss is rectified-flow velocity
matching, as Wan was trained, weighted by the face masks when `masks` is on. Checkpoints are sampled as
`train.sampler` says (`likeness.training.sampling`: by default as renders run, with the video model's speed LoRAs).
With `train.stop_when_flat`, each sampled checkpoint is scored against the job's reference face, and training stops
at the checkpoint where the scores went flat, in a line the pod agent reads.

    python -m likeness.training.native job.json --dataset likeness-out/ada/dataset --masks likeness-out/ada/masks \\
        --out training/ada
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image

from likeness.config import Expert
from likeness.files import atomic_file
from likeness.identity import get_identity_model
from likeness.models.speed_loras import speed_lora_paths
from likeness.models.wan_lora import (
    LORA_TARGETS,
    from_wan_layout,
    is_complete_safetensors,
    lora_metadata,
    save_wan_lora,
    to_wan_layout,
)
from likeness.training.checkpoints import CheckpointScore, StopDecision, flat_since, score_checkpoint
from likeness.training.data import TrainingImage, read_training_folder
from likeness.training.examples import Example, cache_examples, text_encoder_off_the_gpu
from likeness.training.sampling import encode_sample_prompts, sample_settings, write_samples
from likeness.training.spec import OPTIMIZER_STATE, SAMPLES_FOLDER, TrainJob

if TYPE_CHECKING:
    import torch

ADAPTER = "likeness_training"
# AI Toolkit's progress bar, so the pod agent reads both trainers' logs alike (`likeness.training.pod`).
PROGRESS_LINE = "{name}: {percent:3d}%|| {step}/{total} [lr: {lr:.1e} loss: {loss:.3e}]"
# Read by the pod agent too (`likeness.training.pod.parse_early_stop`): the driver records where and why.
EARLY_STOP_LINE = "{name}: stopped early at step {step}: {reason}"

StepListener = Callable[[int, int, float], None]


class TrainedExpert(NamedTuple):
    """A transformer being trained and the range of noise levels (sigma) it sees."""

    name: Expert
    transformer: Any
    low: float
    high: float


def flow_matching_loss(
    transformer: Any,
    pipe: Any,
    latents: torch.Tensor,
    text: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity loss at noise level `sigma`: the transformer predicts noise - data; `weights` scale it per latent."""

    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1, 1) * noise
    timestep = sigma * pipe.scheduler.config.num_train_timesteps
    if pipe.config.expand_timesteps:
        patch = transformer.config.patch_size
        tokens = latents.shape[2] // patch[0] * (latents.shape[3] // patch[1]) * (latents.shape[4] // patch[2])
        timestep = timestep[:, None].expand(-1, tokens)
    prediction = transformer(
        hidden_states=noisy.to(transformer.dtype),
        timestep=timestep,
        encoder_hidden_states=text.to(transformer.dtype),
        return_dict=False,
    )[0]
    error = (prediction.float() - (noise - latents).float()) ** 2
    if weights is not None:
        error = error * weights
    return error.mean()


def experts_of(pipe: Any, job: TrainJob) -> list[TrainedExpert]:
    """The transformers to train and their sigma ranges; refuses a base model the pipeline is not."""
    two = getattr(pipe, "transformer_2", None) is not None
    if two != (job.config.base == "wan22_14b"):
        found = "two experts (transformer and transformer_2)" if two else "one transformer"
        raise ValueError(f"train.base={job.config.base}, but the model {job.model.source} has {found}")
    if not two:
        return [TrainedExpert("high_noise", pipe.transformer, 0.0, 1.0)]
    # The pipeline runs transformer (high noise) for timesteps at or above boundary_ratio * 1000, transformer_2 below.
    boundary = pipe.config.boundary_ratio or job.config.boundary_ratio
    ranges = {"high_noise": (pipe.transformer, boundary, 1.0), "low_noise": (pipe.transformer_2, 0.0, boundary)}
    return [TrainedExpert(name, *ranges[name]) for name in job.config.experts]


def newest_checkpoint(folder: Path, job: TrainJob) -> int:
    """The newest step whose checkpoint files are all complete in `folder` (0: none)."""
    pattern = re.compile(rf"^{re.escape(job.name)}_(\d{{9}})(?:_(high_noise|low_noise))?\.safetensors$")
    found: dict[int, set[str]] = {}
    for path in folder.glob("*.safetensors"):
        match = pattern.match(path.name)
        if match and is_complete_safetensors(path):
            found.setdefault(int(match[1]), set()).add(match[2] or "high_noise")
    wanted = set(job.config.trained_experts)
    return max((step for step, experts in found.items() if wanted <= experts), default=0)


class Trainer:
    """One training run of `job` on `pipe`, writing into `folder`; `train()` runs it to the last step."""

    def __init__(self, job: TrainJob, pipe: Any, images: list[TrainingImage], folder: Path) -> None:
        self.job, self.pipe, self.images, self.folder = job, pipe, images, folder
        self.config = job.config
        self.experts = experts_of(pipe, job)
        self.multiple = max(16, pipe.vae_scale_factor_spatial * 2)
        if self.config.stop_when_flat and job.reference is None:
            raise ValueError("train.stop_when_flat needs the job's reference face, to score the samples against")
        if sample_settings(job).speed_loras:
            # One not on this machine (a pod's image) fails here, not at the first sample hundreds of steps in.
            speed_lora_paths(job.model)
        self.stopped: StopDecision | None = None  # where `train()` stopped before the last step, and why

    def train(self, on_step: StepListener | None = None, check_stop: Callable[[], None] | None = None) -> list[int]:
        """Train from the newest checkpoint in the folder (or from scratch) to the last step, or to where the
        identity scores went flat (`self.stopped`); returns the checkpoint steps written."""
        import torch
        from peft import LoraConfig

        self.folder.mkdir(parents=True, exist_ok=True)
        examples, embeddings = cache_examples(
            self.pipe, self.images, self.config.resolutions, self.multiple, self.config.masks
        )
        prompts = encode_sample_prompts(self.pipe, self.job)
        for expert in self.experts:
            # The LoRA's initial weights come from the global RNG: seed it, or a re-run differs.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed + len(expert.name))
                expert.transformer.add_adapter(
                    LoraConfig(
                        r=self.config.rank,
                        lora_alpha=self.config.lora_alpha,
                        init_lora_weights="gaussian",
                        target_modules=LORA_TARGETS,
                    ),
                    adapter_name=ADAPTER,
                )
        written: list[int] = []
        try:
            with text_encoder_off_the_gpu(self.pipe):
                trainable = self._trainable()
                optimizer = self._optimizer(trainable)
                generator = torch.Generator("cpu").manual_seed(self.config.seed)
                start = self._resume(optimizer, generator)
                order = np.random.default_rng(self.config.seed).permutation(len(examples)).tolist()
                checkpoint_steps = set(self.job.checkpoint_steps())
                sampled_steps = set(self.job.sampled_steps())
                # The samples so far count too, so a resumed run goes on counting (and one that stopped stays stopped).
                scores = self._scores_up_to(start) if self.config.stop_when_flat else []
                self.stopped = self._flat(scores)
                for step in range(start + 1, self.config.steps + 1):
                    if self.stopped:
                        break
                    if check_stop:
                        check_stop()
                    loss = self._step(step, examples, embeddings, order, optimizer, generator)
                    line = PROGRESS_LINE.format(
                        name=self.job.name,
                        percent=100 * step // self.config.steps,
                        step=step,
                        total=self.config.steps,
                        lr=self.config.learning_rate,
                        loss=loss,
                    )
                    print(line, flush=True)
                    if on_step:
                        on_step(step, self.config.steps, loss)
                    if step in checkpoint_steps:
                        self._save(step, optimizer, generator)
                        written.append(step)
                        if step in sampled_steps:
                            trained = [expert.transformer for expert in self.experts]
                            samples = write_samples(self.pipe, self.job, self.folder, step, trained, ADAPTER, prompts)
                            if self.config.stop_when_flat:
                                scores.append(self._score(step, samples))
                                self.stopped = self._flat(scores)
                if self.stopped:
                    print(EARLY_STOP_LINE.format(name=self.job.name, **self.stopped._asdict()), flush=True)
        finally:
            for expert in self.experts:
                expert.transformer.delete_adapters(ADAPTER)
                expert.transformer.requires_grad_(False)
                if self.config.gradient_checkpointing and expert.transformer.is_gradient_checkpointing:
                    expert.transformer.disable_gradient_checkpointing()
        return written

    def _score(self, step: int, samples: list[Path]) -> CheckpointScore:
        """The identity score of one checkpoint's samples against the job's reference face."""
        assert self.job.reference is not None  # checked in __init__
        images = [Image.open(path) for path in samples]
        return score_checkpoint(step, images, self.job.reference, get_identity_model())

    def _scores_up_to(self, step: int) -> list[CheckpointScore]:
        """The scores of the sampled checkpoints up to `step` whose samples are all in the folder."""
        folder, prompts = self.folder / SAMPLES_FOLDER, range(len(self.config.sample_prompts))
        sampled = {s: [folder / self.job.sample_filename(s, i) for i in prompts] for s in self.job.sampled_steps()}
        return [self._score(s, paths) for s, paths in sampled.items() if s <= step and all(p.is_file() for p in paths)]

    def _flat(self, scores: list[CheckpointScore]) -> StopDecision | None:
        """Where the scores went flat, if that is before the last step (which ends training anyway)."""
        rule = self.config.stop_when_flat
        decision = flat_since(scores, rule) if rule else None
        return decision if decision and decision.step < self.config.steps else None

    def _trainable(self) -> list[Any]:
        parameters = []
        for expert in self.experts:
            expert.transformer.set_adapter(ADAPTER)
            if self.config.gradient_checkpointing:
                expert.transformer.enable_gradient_checkpointing()
            for parameter in expert.transformer.parameters():
                if parameter.requires_grad:
                    # LoRA weights train in float32 under bf16 autocast: bf16 updates of 1e-4 round away.
                    parameter.data = parameter.data.float()
                    parameters.append(parameter)
        return parameters

    def _optimizer(self, parameters: list[Any]) -> Any:
        import torch

        if self.config.optimizer == "adamw8bit":
            try:
                import bitsandbytes
            except ImportError:
                raise RuntimeError(
                    "train.optimizer=adamw8bit needs bitsandbytes (a CUDA machine; it is in the worker image); "
                    "use train.optimizer=adamw"
                ) from None
            return bitsandbytes.optim.AdamW8bit(parameters, lr=self.config.learning_rate)
        return torch.optim.AdamW(parameters, lr=self.config.learning_rate)

    def _expert_at(self, step: int) -> TrainedExpert:
        """Which expert trains at `step`: they take turns every `switch_boundary_every` steps, as in AI Toolkit."""
        turn = (step - 1) // self.config.switch_boundary_every
        return self.experts[turn % len(self.experts)]

    def _step(
        self,
        step: int,
        examples: list[Example],
        embeddings: list[torch.Tensor],
        order: list[int],
        optimizer: Any,
        generator: torch.Generator,
    ) -> float:
        import torch

        example = examples[order[(step - 1) % len(order)]]
        expert = self._expert_at(step)
        dropped = torch.rand((), generator=generator).item() < self.config.caption_dropout
        text = embeddings[-1 if dropped else example.caption]
        noise = torch.randn(example.latents.shape, generator=generator).to(example.latents)
        sigma = expert.low + (expert.high - expert.low) * torch.rand((1,), generator=generator)
        transformer = expert.transformer
        with torch.autocast(
            example.latents.device.type, dtype=transformer.dtype, enabled=transformer.dtype != torch.float32
        ):
            loss = flow_matching_loss(
                transformer, self.pipe, example.latents, text, sigma.to(example.latents), noise, example.weights
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def _save(self, step: int, optimizer: Any, generator: torch.Generator) -> None:
        """The LoRA of each expert at `step`, then the optimizer and RNG state that resume from it."""
        import torch
        from peft.utils import get_peft_model_state_dict

        settings = self.config.model_dump(mode="json", exclude={"sample_prompts"})
        for expert in self.experts:
            layers = get_peft_model_state_dict(expert.transformer, adapter_name=ADAPTER)
            metadata = lora_metadata(
                trigger=self.job.trigger,
                base_model=self.job.model.source,
                arch=self.config.base,
                rank=self.config.rank,
                alpha=self.config.lora_alpha,
                step=step,
                settings={**settings, "expert": expert.name},
                captions=[image.caption for image in self.images],
                expert=expert.name if len(self.experts) > 1 else None,
            )
            path = self.folder / self.job.checkpoint_filename(step, expert.name)
            save_wan_lora(path, to_wan_layout(layers, self.config.lora_alpha), metadata)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
        }
        with atomic_file(self.folder / OPTIMIZER_STATE) as file:
            torch.save(state, file)

    def _resume(self, optimizer: Any, generator: torch.Generator) -> int:
        """Load the newest complete checkpoint and its optimizer state; the step to go on from (0: start)."""
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        step = newest_checkpoint(self.folder, self.job)
        if not step:
            return 0
        for expert in self.experts:
            wan = load_file(self.folder / self.job.checkpoint_filename(step, expert.name))
            set_peft_model_state_dict(expert.transformer, from_wan_layout(wan), adapter_name=ADAPTER)
        state_path = self.folder / OPTIMIZER_STATE
        state = torch.load(state_path, weights_only=True) if state_path.is_file() else None
        if state is None or state["step"] != step:
            # The weights resume; the optimizer's moments start again, as AI Toolkit does without optimizer.pt.
            print(f"resuming from step {step} without optimizer state ({OPTIMIZER_STATE} is not of that step)")
            return step
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        print(f"resuming from step {step}", flush=True)
        return step


def load_base_pipeline(job: TrainJob) -> Any:
    """The job's base model as a diffusers WanPipeline, on the job's device (a pod loads its own)."""
    import torch
    from diffusers import WanPipeline

    from likeness.models.profiles import spec_path
    from likeness.settings import get_settings

    pipe = WanPipeline.from_pretrained(
        spec_path("LoRA base", job.model, get_settings()), dtype=getattr(torch, job.dtype)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(job.device)


def main(argv: list[str] | None = None) -> int:
    """Train a job from its JSON file: the entry point a pod runs."""
    parser = argparse.ArgumentParser(prog="python -m likeness.training.native", description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="the TrainJob as JSON")
    parser.add_argument("--dataset", type=Path, required=True, help="images with same-stem .txt captions")
    parser.add_argument("--masks", type=Path, help="a mask per image, same stem (used when the job's masks is on)")
    parser.add_argument(
        "--out", type=Path, required=True, help="the training folder: checkpoints, optimizer.pt, samples"
    )
    args = parser.parse_args(argv)
    job = TrainJob.model_validate_json(args.job.read_text())
    images = read_training_folder(args.dataset, args.masks if job.config.masks else None)
    pipe = load_base_pipeline(job)
    trainer = Trainer(job, pipe, images, args.out)
    steps = trainer.train()
    last = trainer.stopped.step if trainer.stopped else job.config.steps
    print(f"done: {len(steps)} checkpoints, last step {last}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

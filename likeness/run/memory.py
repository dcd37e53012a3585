"""The memory mode each model of a stage loads in on the GPU it runs on, chosen before the first model loads.

A role whose mode is `auto` (the production profiles' default) gets the cheapest that fits this GPU, resident first,
by the same counts of weights and activations `likeness estimate` prints (`likeness.estimate.work.choose_mode`); a
named mode is kept where it fits. On the CPU nothing is offloaded and nothing is counted. Each choice is said, with
its reason, through `say` (the flow's log):

    profile = memory_for_dataset(profile, config.dataset, shots, say=print)
    # editor: resident, the cheapest that fits: 61.2 GiB of 71.5 GiB usable

Training's `gradient_checkpointing: auto` is decided here too, by the same counts (`checkpointing_for_training`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from likeness.config import DatasetConfig, ModelProfile, RenderConfig, Role, TrainConfig
from likeness.dataset.catalogue import Shot
from likeness.estimate.character import edit_work, rendering_work, upscale_work
from likeness.estimate.training import checkpointing_decided, training_work
from likeness.estimate.work import Work, choose_mode
from likeness.inputs import InvalidInput
from likeness.models.profiles import device_for
from likeness.render.jobs import RenderJob
from likeness.settings import get_settings

Say = Callable[[str], None]


def memory_for_dataset(profile: ModelProfile, config: DatasetConfig, shots: list[Shot], say: Say) -> ModelProfile:
    """`profile` with the editor's and the refiner's modes chosen for the dataset stage's shots on this GPU."""

    def works() -> dict[Role, Work]:
        return {"editor": edit_work(config, shots, profile), "refiner": upscale_work(config, shots, profile)}

    return _chosen(profile, works, say)


def memory_for_training(profile: ModelProfile, config: TrainConfig, images: int, say: Say) -> ModelProfile:
    """`profile` with the video model's mode chosen for training on this GPU (our trainer holds it resident where
    it fits), for `config` with its gradient checkpointing decided (`checkpointing_for_training`)."""
    return _chosen(profile, lambda: {"video": training_work(config, images, profile)}, say)


def checkpointing_for_training(profile: ModelProfile, config: TrainConfig, images: int, say: Say) -> TrainConfig:
    """`config` with `gradient_checkpointing: auto` decided for this GPU (off where the video model stays resident
    without it), said through `say`; on the CPU, on."""
    device = device_for(profile, get_settings())
    memory = None if device == "cpu" else gpu_memory_bytes(device)
    decided = checkpointing_decided(config, images, profile, memory)
    if config.gradient_checkpointing == "auto" and memory is not None:
        if decided.gradient_checkpointing:
            say("gradient checkpointing: on, as training without it would not hold the video model resident here")
        else:
            say("gradient checkpointing: off, as training without it holds the video model resident here")
    return decided


def memory_for_renders(
    profile: ModelProfile, config: RenderConfig, jobs: Sequence[RenderJob], animate: bool, say: Say
) -> ModelProfile:
    """`profile` with the video model's (and for an animation, the animator's) mode chosen for `jobs` on this GPU.
    The animator is counted as the video model: both are Wan 2.2 A14B experts of one size."""

    def works() -> dict[Role, Work]:
        work = rendering_work(config, profile, list(jobs))
        return {"video": work, "animator": work} if animate else {"video": work}

    return _chosen(profile, works, say)


def gpu_memory_bytes(device: str) -> int:
    """The total memory of the CUDA device `device` names."""
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory


def choose_memory(profile: ModelProfile, works: dict[Role, Work], memory_bytes: int, say: Say) -> ModelProfile:
    """`profile` with each role of `works` in the mode `choose_mode` picks on a GPU of `memory_bytes`; InvalidInput,
    before anything loads, where not even sequential offload fits."""
    modes = {}
    for role, work in works.items():
        choice = choose_mode(work, memory_bytes, profile.memory_mode(role))
        if choice.mode is None:
            raise InvalidInput(f"{role} does not fit this GPU ({memory_bytes / 2**30:.0f} GiB): {choice.reason}")
        say(f"{role}: {choice.reason}")
        modes[role] = choice.mode
    return profile.with_memory_modes(modes)


def _chosen(profile: ModelProfile, works: Callable[[], dict[Role, Work]], say: Say) -> ModelProfile:
    device = device_for(profile, get_settings())
    if device == "cpu":
        return profile
    return choose_memory(profile, works(), gpu_memory_bytes(device), say)

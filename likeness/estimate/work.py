"""A stage's work before it meets a GPU (`Work`: evaluations, FLOPs, weights and activations by part) and the memory
mode it runs in on a GPU of a given size (`choose_mode`), which the estimate prints and a run loads its models in.

    choice = choose_mode(work, 80 * 2**30, "auto")   # MemoryChoice(mode="none", peak_bytes=..., reason="resident: ...")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from likeness.config import Offload
from likeness.estimate import gpus
from likeness.estimate.gpus import MemoryMode

BF16_BYTES = 2
# The largest part's share resident under sequential offload: about one of its ~40 blocks.
SEQUENTIAL_SHARE = 1 / 40
# What `auto` tries, cheapest first. fp8 is not on it: it changes the weights, so a profile asks for it by name.
LADDER: tuple[MemoryMode, ...] = ("none", "model", "sequential")
MODE_NAMES = {"none": "resident", "model": "model offload", "sequential": "sequential offload"}


class Count(NamedTuple):
    """What a stage does, expected or at most: FLOPs, the weight bytes model offload moves in (each pipeline call
    moves in the parts it runs), evaluations of its largest part (each streams it in under sequential offload), and
    the FLOPs of `flops` that run at the FP8 rate (the block linears of a role whose weights are fp8-matmul)."""

    flops: float = 0.0
    moved_bytes: float = 0.0
    streams: float = 0.0
    fp8_flops: float = 0.0

    def plus(self, other: Count) -> Count:
        return Count(*(a + b for a, b in zip(self, other, strict=True)))

    def times(self, factor: float) -> Count:
        return Count(*(factor * value for value in self))


@dataclass
class Work:
    """A stage's count before it meets a GPU: evaluations, what it does (expected and at most), what is resident."""

    stage: str
    evaluations: float = 0.0
    expected: Count = Count()
    most: Count = Count()
    parameters: dict[str, int] = field(default_factory=dict)  # by part
    activations: dict[str, int] = field(default_factory=dict)  # peak bytes while the part works
    state_bytes: int = 0  # resident throughout: a trainer's LoRA and optimizer state
    offload: MemoryMode | None = None  # the mode the stage's code holds its models in; None: the role's
    # The part whose measured share of peak (bench/gpu_calibrate.py) times the stage's FLOPs; None: the assumed one.
    calibrated_part: str | None = None
    # Parts whose weights are stored in fp8 (a role's `weights: fp8` or `fp8-matmul`): a byte a weight.
    fp8_parts: frozenset[str] = frozenset()
    # Parts a resident stage moves to CPU memory once they have encoded its inputs, before the others work (a
    # trainer's text encoder): resident with the rest at first, then making room for the work's activations.
    off_after_encoding: frozenset[str] = frozenset()

    def add(self, expected: Count, most: Count | None = None) -> None:
        self.expected = self.expected.plus(expected)
        self.most = self.most.plus(expected if most is None else most)

    def working(self, part: str, activation_bytes: int) -> None:
        self.activations[part] = max(self.activations.get(part, 0), activation_bytes)

    def weight_bytes(self) -> dict[str, int]:
        """Each part's weights in bytes: two a weight in bf16, one in fp8."""
        return {part: count * (1 if part in self.fp8_parts else BF16_BYTES) for part, count in self.parameters.items()}

    def peak_bytes(self, mode: MemoryMode) -> int:
        """Bytes on the GPU at the worst moment of this stage in `mode`."""
        weights = self.weight_bytes()
        block = int(max(weights.values()) * SEQUENTIAL_SHARE)
        if mode != "none" or not self.off_after_encoding:
            return gpus.peak_memory(weights, self.activations, 1, mode, block, self.state_bytes)
        working = {part: count for part, count in weights.items() if part not in self.off_after_encoding}
        return max(sum(weights.values()), gpus.peak_memory(working, self.activations, 1, mode, block, self.state_bytes))


class StageEstimate(NamedTuple):
    """One stage of a character: its model evaluations, FLOPs, and what they take on one GPU, expected and at most.
    Seconds are the compute's and the offload's copies (`offload_seconds`, 0 when every part stays resident)."""

    stage: str
    evaluations: int
    flops: float
    seconds: float
    peak_bytes: int
    memory_mode: MemoryMode | None  # None: it fits no mode on this GPU
    usd: float
    most_flops: float
    most_seconds: float
    most_usd: float
    offload_seconds: float


class MemoryChoice(NamedTuple):
    """The mode a stage holds its model in on one GPU, its peak bytes there, and why (for the log)."""

    mode: MemoryMode | None  # None: not even sequential offload fits
    peak_bytes: int
    reason: str


def choose_mode(work: Work, memory_bytes: float, requested: Offload) -> MemoryChoice:
    """The memory mode of `work` on a GPU of `memory_bytes`, keeping MEMORY_MARGIN of it free: for `auto`, the first
    of LADDER that fits; for a named mode, that one or the first lighter one that fits."""
    if work.offload is not None:
        requested = work.offload
    usable = memory_bytes * (1 - gpus.MEMORY_MARGIN)
    modes = LADDER if requested == "auto" else LADDER[LADDER.index(requested) :]
    tried: list[str] = []
    for mode in modes:
        peak = work.peak_bytes(mode)
        if peak <= usable:
            why = "the cheapest that fits" if requested == "auto" else f"{MODE_NAMES[requested]} as the profile says"
            if tried:
                why += f" ({'; '.join(tried)})"
            return MemoryChoice(mode, peak, f"{MODE_NAMES[mode]}, {why}: {_gib(peak)} of {_gib(usable)} usable")
        tried.append(f"{MODE_NAMES[mode]} would need {_gib(peak)}")
    return MemoryChoice(None, peak, f"nothing fits: {'; '.join(tried)}, {_gib(usable)} usable")


def _gib(count: float) -> str:
    return f"{count / 2**30:.1f} GiB"

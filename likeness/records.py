"""What the stages hand each other: small typed records that point at bytes in the artifact store."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from likeness.dataset.curation import Figures
from likeness.storage.artifacts import ArtifactRef


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class UpscaleResult(Record):
    """The 2K refined image and what the identity guard measured to choose its start step."""

    image: ArtifactRef
    # The start step the guard chose, or the configured one where identity could not be measured.
    start_step: int
    # Identity distance to the reference of the ESRGAN output (None: no reference, or no face found).
    pre_refine_distance: float | None
    identity_distance: float | None
    # Every start step refined and its distance, in the order tried.
    tries: tuple[tuple[int, float | None], ...]
    # The reference crop USO conditioned every refine on; None: refined without USO.
    uso_subject: ArtifactRef | None = None


class Rejection(Record):
    """One try that curation refused: the image, its figures and why, kept for the manifest and contact sheet."""

    shot: str
    attempt: int
    seed: int
    image: ArtifactRef
    figures: Figures
    reasons: tuple[str, ...]


class DatasetItem(Record):
    """One kept training image: where it came from, what was measured on it, and its caption."""

    shot: str
    entry: str
    group: str
    intensity: float | None
    edit_prompt: str
    seed: int
    attempt: int
    edited: ArtifactRef
    figures: Figures
    upscale: UpscaleResult
    mask: ArtifactRef
    caption: str
    rejected: tuple[Rejection, ...] = ()

    @property
    def image(self) -> ArtifactRef:
        """The training image: the edit, upscaled and refined."""
        return self.upscale.image

    def filename(self, trigger: str) -> str:
        """The AI Toolkit / kohya file name of the image; the caption and the mask share its stem."""
        return f"{trigger}_{self.shot}.png"


class TrainingItem(Record):
    """One image a LoRA trains on: its file name in the training folder, its caption and its loss mask."""

    filename: str
    image: ArtifactRef
    caption: str
    mask: ArtifactRef | None = None


class TrainingSet(Record):
    """What a LoRA trains on, and the reference photo its checkpoints are scored against."""

    trigger: str
    items: tuple[TrainingItem, ...]
    # None: no reference to score against, so the last checkpoint is the one chosen.
    reference: ArtifactRef | None
    # False: a stylised character, whose checkpoints are not scored by face identity.
    identity_checked: bool


class DatasetRef(Record):
    trigger: str
    reference: ArtifactRef
    items: tuple[DatasetItem, ...]
    # Shots whose every try was refused: they are not in the dataset, their tries are in the manifest.
    dropped: tuple[tuple[Rejection, ...], ...] = ()
    identity_checked: bool
    # Phrases found in every caption: the LoRA would bake them in beside the trigger word.
    repeated_phrases: tuple[str, ...] = ()
    manifest: ArtifactRef
    contact_sheet: ArtifactRef

    def training_set(self) -> TrainingSet:
        """The kept images, captions and masks as a trainer takes them."""
        items = tuple(
            TrainingItem(filename=item.filename(self.trigger), image=item.image, caption=item.caption, mask=item.mask)
            for item in self.items
        )
        return TrainingSet(
            trigger=self.trigger, items=items, reference=self.reference, identity_checked=self.identity_checked
        )


class LoraCheckpoint(Record):
    """The LoRA at one step, its samples and how close their faces are to the reference."""

    step: int
    # The training loss at this step (None where the trainer's log did not say).
    loss: float | None
    # The LoRA; for Wan 2.2 A14B the high-noise expert's file, loaded into `transformer`.
    weights: ArtifactRef
    # Wan 2.2 A14B: the low-noise expert's file, loaded with `load_into_transformer_2=True`.
    low_noise: ArtifactRef | None = None
    # One image per sample prompt, fixed seeds (none where this step was not sampled).
    samples: tuple[ArtifactRef, ...] = ()
    # Median identity distance of the samples' faces to the reference (None: not scored, or no face found).
    identity_distance: float | None = None
    faces_found: int = 0

    @classmethod
    def from_files(
        cls, step: int, loss: float | None, files: Sequence[ArtifactRef], samples: Sequence[ArtifactRef]
    ) -> LoraCheckpoint:
        """A checkpoint from its files in the trained experts' order: one, or A14B's high-noise then low-noise."""
        if len(files) not in (1, 2):
            raise ValueError(f"a checkpoint is one file or an A14B pair, got {len(files)}")
        low_noise = files[1] if len(files) == 2 else None
        return cls(step=step, loss=loss, weights=files[0], low_noise=low_noise, samples=tuple(samples))

    @property
    def files(self) -> tuple[ArtifactRef, ...]:
        return (self.weights,) if self.low_noise is None else (self.weights, self.low_noise)


class TrainCost(Record):
    """What a run on rented GPUs cost: the price the API quoted for the GPU times the pods' time."""

    gpu_type: str
    cost_per_hr: float
    pod_seconds: float
    dollars: float
    # More than one where a lost pod was replaced.
    pods: int


class EarlyStop(Record):
    """Where training stopped before its last step, a sampled checkpoint, and why (`train.stop_when_flat`)."""

    step: int
    reason: str


class StrengthStill(Record):
    """One still of a strength probe: the strengths and seed it was rendered at, and its main face's identity
    distance to the reference (None: no face found)."""

    lora_scale: float
    # None: the video model has no speed LoRAs.
    speed_lora_scale: float | None
    seed: int
    image: ArtifactRef
    identity_distance: float | None = None


class Strengths(Record):
    """A strength probe of the chosen checkpoint (`render.probe`): its stills, their picture, and the strengths
    renders take where their settings leave them open."""

    stills: tuple[StrengthStill, ...]
    # The stills in rows by LoRA strength, each with its distance, the chosen pair outlined (a PNG).
    grid: ArtifactRef
    # The pair whose stills' median distance is lowest; None: no pair drew the face in most of its stills (and for
    # the speed LoRAs, a video model without them), so renders keep their settings, else 1.0.
    lora_scale: float | None = None
    speed_lora_scale: float | None = None
    identity_median: float | None = None


class LoraRef(Record):
    """The checkpoints of one LoRA training run, oldest first, and the one chosen as the character's LoRA."""

    trigger: str
    base_model: str
    base: str = "wan22_5b"
    backend: str = "local"
    checkpoints: tuple[LoraCheckpoint, ...]
    # The step whose samples look most like the reference; the last step until the checkpoints are scored.
    best_step: int | None = None
    # Identity distance by step, a PNG (None when identity was not checked).
    scores_plot: ArtifactRef | None = None
    cost: TrainCost | None = None
    # The identity scores of the samples went flat: the last checkpoint is where training stopped.
    stopped_early: EarlyStop | None = None
    # The render strengths the chosen checkpoint looks most like the reference at (None: not probed).
    strengths: Strengths | None = None

    @property
    def final(self) -> LoraCheckpoint:
        return self.checkpoints[-1]

    @property
    def best(self) -> LoraCheckpoint:
        """The chosen checkpoint: the best-scoring one, else the last."""
        return next((c for c in self.checkpoints if c.step == self.best_step), self.final)


class SpeedLoraUse(Record):
    """A step-distillation LoRA a render ran with (lightx2v's), into which expert, at which strength."""

    source: str
    file: str
    expert: str
    scale: float


class RenderItem(Record):
    """A rendered image or video and its lineage: enough to make it again; and how like the reference it is."""

    kind: str
    prompt: str
    negative_prompt: str
    seed: int
    frames: int
    steps: int
    size: int
    lora: ArtifactRef
    lora_scale: float
    model: str
    output: ArtifactRef
    # Wan 2.2 A14B: the character LoRA's low-noise file, in `transformer_2`.
    low_noise_lora: ArtifactRef | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    fx: str = "none"
    speed_loras: tuple[SpeedLoraUse, ...] = ()
    # The video upscaled in chunks (`render.upscale_long_side`), beside the render.
    upscaled: ArtifactRef | None = None
    # Identity distance to the reference: the best-scoring frame, and the median over the frames scored.
    identity_distance: float | None = None
    identity_median: float | None = None
    faces_found: int = 0
    frames_scored: int = 0


class Renders(Record):
    """A render run's images and videos, and their contact sheet with the identity scores."""

    items: tuple[RenderItem, ...]
    contact_sheet: ArtifactRef | None = None


class StageCost(Record):
    """What a stage was estimated to cost on one GPU before the run (`likeness.estimate`)."""

    stage: str
    gpu: str
    evaluations: int
    tflop: float
    seconds: float
    peak_gib: float
    memory_mode: str | None  # None: it fits no memory mode on that GPU
    usd: float
    # At most: every shot edited curation's max_tries times, the guard refining the most steps (None: an older record)
    most_seconds: float | None = None
    most_usd: float | None = None


class CharacterResult(Record):
    """What a run made: a `dataset` run has only the dataset."""

    dataset: DatasetRef
    lora: LoraRef | None = None
    renders: tuple[RenderItem, ...] = ()
    render_sheet: ArtifactRef | None = None
    # A run on a GPU profile is estimated before its first stage.
    estimate: tuple[StageCost, ...] = ()

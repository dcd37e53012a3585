"""Our trainer on the tiny models: both A14B experts, resume that gives the uninterrupted run's weights, bad folders,
stopping where the identity scores went flat, and samples made as renders run (the speed LoRAs' 4 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from likeness.config import StopWhenFlat, render_template
from likeness.identity import reference_face
from likeness.models import pipelines
from likeness.models.profiles import ProfileUnavailable, load_profile
from likeness.models.wan_lora import read_lora_metadata
from likeness.training.data import DatasetProblem, read_training_folder
from likeness.training.examples import text_encoder_off_the_gpu
from likeness.training.native import Trainer
from likeness.training.sampling import SampleSettings, encode_sample_prompts, sample_settings, write_samples
from likeness.training.spec import SAMPLES_FOLDER, TrainJob


def folder_of(root: Path, count: int = 3, masks: bool = True) -> tuple[Path, Path]:
    images, mask_dir = root / "dataset", root / "masks"
    images.mkdir(parents=True)
    mask_dir.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(images / f"Ada_{i}.png")
        (images / f"Ada_{i}.txt").write_text(f"Ada, shot {i}")
        if masks:
            Image.fromarray(np.full((64, 48), 255 * (i % 2), np.uint8)).save(mask_dir / f"Ada_{i}.png")
    return images, mask_dir


def job_for(profile: str, **train) -> TrainJob:
    loaded = load_profile(profile)
    config = loaded.train.model_copy(update=train)
    video = loaded.models["video"]
    return TrainJob(name="Ada", trigger="Ada", config=config, model=video, dtype="float32", device="cpu")


def test_the_a14b_trains_both_experts_into_one_file_each(likeness_env, tmp_path):
    job = job_for("tiny-a14b", steps=4, checkpoint_every=4)
    images, masks = folder_of(tmp_path)
    pipe = pipelines.get_pipeline("video", load_profile("tiny-a14b"))
    assert Trainer(job, pipe, read_training_folder(images, masks), tmp_path / "out").train() == [4]
    for expert in ("high_noise", "low_noise"):
        tensors = load_file(tmp_path / "out" / f"Ada_000000004_{expert}.safetensors")
        assert all(key.startswith("diffusion_model.blocks.") for key in tensors)
        # lora_B starts at zero: each expert took optimizer steps on its own timestep range.
        assert any(np.abs(v).max() > 0 for k, v in tensors.items() if "lora_B" in k), expert
        # What LoRA managers list: a name per expert, the captions' tags and how many captions carry each.
        meta = read_lora_metadata(tmp_path / "out" / f"Ada_000000004_{expert}.safetensors")
        assert meta["ss_output_name"] == f"Ada_{expert}" and meta["ss_num_train_images"] == "3"
        tags = {"Ada": 3, "shot 0": 1, "shot 1": 1, "shot 2": 1}
        assert json.loads(meta["ss_tag_frequency"]) == {"1_Ada": tags}
    assert getattr(pipe.transformer_2, "peft_config", {}) == {}


def test_the_base_model_must_be_the_pipelines(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    pipe = pipelines.get_pipeline("video", load_profile("tiny"))
    with pytest.raises(ValueError, match="train.base=wan22_14b, but the model tiny:video has one transformer"):
        Trainer(job_for("tiny", base="wan22_14b"), pipe, read_training_folder(images, masks), tmp_path / "out")


def test_a_resumed_run_ends_with_the_uninterrupted_runs_weights(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    data = read_training_folder(images, masks)
    pipe = pipelines.get_pipeline("video", load_profile("tiny"))
    job = job_for("tiny", steps=6, checkpoint_every=3, caption_dropout=0.3)
    Trainer(job, pipe, data, tmp_path / "whole").train()

    class Cut(Exception):
        pass

    seen = []

    def stop_after_the_first_checkpoint() -> None:
        if len(seen) == 4:  # steps 1-3 ran and saved; stop before step 5
            raise Cut
        seen.append(1)

    with pytest.raises(Cut):
        Trainer(job, pipe, data, tmp_path / "cut").train(check_stop=stop_after_the_first_checkpoint)
    assert sorted(p.name for p in (tmp_path / "cut").glob("*.safetensors")) == ["Ada_000000003.safetensors"]
    assert Trainer(job, pipe, data, tmp_path / "cut").train() == [6]
    whole = load_file(tmp_path / "whole" / "Ada_000000006.safetensors")
    resumed = load_file(tmp_path / "cut" / "Ada_000000006.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(np.array_equal(whole[key], resumed[key]) for key in whole)


def test_a_checkpoint_cut_off_mid_write_is_not_resumed_from(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    data = read_training_folder(images, masks)
    pipe = pipelines.get_pipeline("video", load_profile("tiny"))
    job = job_for("tiny", steps=6, checkpoint_every=3)
    Trainer(job, pipe, data, tmp_path / "out").train()
    last = tmp_path / "out" / "Ada_000000006.safetensors"
    last.write_bytes(last.read_bytes()[:-100])
    # Step 6 is cut off: training resumes from step 3 and writes step 6 again, whole.
    assert Trainer(job, pipe, data, tmp_path / "out").train() == [6]
    assert load_file(last)


def test_a_folder_without_captions_or_masks_is_refused_naming_the_files(tmp_path):
    images, masks = folder_of(tmp_path)
    (images / "Ada_1.txt").unlink()
    with pytest.raises(DatasetProblem, match=r"1 of 3 images have no caption .*: Ada_1\.png"):
        read_training_folder(images, masks)
    (images / "Ada_1.txt").write_text("Ada")
    (masks / "Ada_2.png").unlink()
    with pytest.raises(DatasetProblem, match=r"no mask for 1 images: Ada_2\.png .*train\.masks=false"):
        read_training_folder(images, masks)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetProblem, match="holds no image"):
        read_training_folder(empty)


def test_our_progress_line_reads_as_ai_toolkits_bar():
    from likeness.training.native import PROGRESS_LINE
    from likeness.training.pod import parse_progress

    line = PROGRESS_LINE.format(name="Ada", percent=50, step=3, total=6, lr=1e-3, loss=0.1234)
    assert parse_progress(line, "Ada") == (3, 6, 0.1234)
    assert parse_progress(line, "Bob") is None


def test_a_run_that_stopped_where_the_scores_went_flat_stays_stopped_when_started_again(
    likeness_env, tmp_path, face_photo, capsys
):
    from likeness.training.pod import parse_early_stop

    images, masks = folder_of(tmp_path)
    data = read_training_folder(images, masks)
    pipe = pipelines.get_pipeline("video", load_profile("tiny"))
    rule = StopWhenFlat(min_step=2, patience=1)
    job = job_for("tiny", steps=6, checkpoint_every=2, stop_when_flat=rule)
    with pytest.raises(ValueError, match="train.stop_when_flat needs the job's reference face"):
        Trainer(job, pipe, data, tmp_path / "out")
    face, _ = reference_face(Image.open(face_photo), "the reference")
    job = job.model_copy(update={"reference": face})
    trainer = Trainer(job, pipe, data, tmp_path / "out")
    # The tiny model draws no face: step 2 has no score, none better than nothing, and min_step allows the stop.
    assert trainer.train() == [2]
    assert trainer.stopped is not None and trainer.stopped.step == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["Ada_000000002.safetensors"]
    # The line the pod agent reads, so that the driver records the stop.
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "stopped early" in line]
    assert parse_early_stop(line, "Ada") == {"step": 2, "reason": trainer.stopped.reason}
    assert parse_early_stop(line, "Bob") is None
    # Started again on its folder (a replaced pod), it rescores the samples there and trains no further.
    again = Trainer(job, pipe, data, tmp_path / "out")
    assert again.train() == []
    assert again.stopped == trainer.stopped


def test_checkpoints_are_sampled_as_renders_run_where_the_model_has_speed_loras():
    # Production's A14B: its speed LoRAs' 4 sigmas without CFG; "training" keeps the trainer's own steps and CFG.
    production = load_profile("production")
    job = TrainJob.for_profile("Ada", production.train, production, "cuda")
    assert sample_settings(job) == SampleSettings(steps=4, guidance_scale=1.0, speed_loras=True)
    kept = job.model_copy(update={"config": production.train.model_copy(update={"sampler": "training"})})
    assert sample_settings(kept) == SampleSettings(steps=20, guidance_scale=4.0, speed_loras=False)
    # A model without speed LoRAs (tiny, production-5b) samples as "training" does.
    assert sample_settings(job_for("tiny")) == SampleSettings(steps=2, guidance_scale=1.0, speed_loras=False)


def test_sampling_as_renders_run_costs_4_evaluations_a_sample_and_changes_no_trained_weight(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    data = read_training_folder(images, masks)
    pipe = pipelines.get_pipeline("video", load_profile("tiny-a14b"))
    scheduler = pipe.scheduler
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(module, args, output):
            # The samples run without gradients (the pipeline's no_grad); the training steps with them.
            if not torch.is_grad_enabled():
                calls[name] = calls.get(name, 0) + 1

        return hook

    hooks = [
        pipe.transformer.register_forward_hook(count("transformer")),
        pipe.transformer_2.register_forward_hook(count("transformer_2")),
    ]
    try:
        runs = {}
        for sampler in ("render", "training"):
            calls.clear()
            # Samples at steps 2 and 4: steps 3 and 4 train after a sample.
            job = job_for("tiny-a14b", steps=4, checkpoint_every=2, sampler=sampler)
            assert Trainer(job, pipe, data, tmp_path / sampler).train() == [2, 4]
            runs[sampler] = dict(calls)
    finally:
        for hook in hooks:
            hook.remove()
    # Two checkpoints of two prompts: 4 Euler steps a sample, no CFG, the first two (sigma above the boundary) on
    # the high-noise expert; the training sampler takes the tiny profile's 2 steps.
    assert runs["render"] == {"transformer": 2 * 2 * 2, "transformer_2": 2 * 2 * 2}
    assert sum(runs["training"].values()) == 2 * 2 * 2
    # Sampling leaves training as it was: the same weights at the end, whichever sampler ran in between.
    for expert in ("high_noise", "low_noise"):
        rendered = load_file(tmp_path / "render" / f"Ada_000000004_{expert}.safetensors")
        trained = load_file(tmp_path / "training" / f"Ada_000000004_{expert}.safetensors")
        assert rendered.keys() == trained.keys()
        assert all(np.array_equal(rendered[key], trained[key]) for key in rendered), expert

    def sample(run: str, step: int) -> np.ndarray:
        return np.asarray(Image.open(tmp_path / run / SAMPLES_FOLDER / f"Ada__{step:09d}_0.png"))

    assert not np.array_equal(sample("render", 2), sample("training", 2))
    # The LoRA being trained is on beside the speed LoRAs: its checkpoints' samples differ.
    assert not np.array_equal(sample("render", 2), sample("render", 4))
    # No speed LoRA, no training adapter and no swapped scheduler is left on the process's pipeline.
    assert pipe.scheduler is scheduler
    assert not getattr(pipe.transformer, "peft_config", {}) and not getattr(pipe.transformer_2, "peft_config", {})


def test_a_speed_lora_missing_here_fails_before_the_first_step(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    data = read_training_folder(images, masks)
    pipe = pipelines.get_pipeline("video", load_profile("tiny-a14b"))
    job = job_for("tiny-a14b", steps=2)
    missing = job.model.speed_loras["low_noise"].model_copy(update={"source": "likeness-tests/no-such-repo"})
    model = job.model.model_copy(update={"speed_loras": {**job.model.speed_loras, "low_noise": missing}})
    with pytest.raises(ProfileUnavailable, match="video low_noise speed LoRA"):
        Trainer(job.model_copy(update={"model": model}), pipe, data, tmp_path / "out")
    # The training sampler needs no speed LoRA.
    kept = job.config.model_copy(update={"sampler": "training"})
    Trainer(job.model_copy(update={"model": model, "config": kept}), pipe, data, tmp_path / "out")


def test_the_text_encoder_runs_only_before_the_first_step_and_samples_are_the_pipelines_own(likeness_env, tmp_path):
    images, masks = folder_of(tmp_path)
    pipe = pipelines.get_pipeline("video", load_profile("tiny-a14b"))
    steps_done: list[int] = []
    encoded_after: list[int] = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: encoded_after.append(len(steps_done)))
    try:
        job = job_for("tiny-a14b", steps=4, checkpoint_every=2, sampler="training", sample_guidance_scale=3.0)
        Trainer(job, pipe, read_training_folder(images, masks), tmp_path / "out").train(
            on_step=lambda step, total, loss: steps_done.append(step)
        )
    finally:
        hook.remove()
    # Three captions and the empty one, then each sample prompt and, with CFG, the empty negative: all before step 1.
    assert steps_done == [1, 2, 3, 4]
    assert encoded_after == [0] * (3 + 1 + 2 * len(job.config.sample_prompts))

    # A sample from the prompts encoded ahead is the image the pipeline makes from the prompt itself.
    settings = sample_settings(job)
    (tmp_path / "direct").mkdir()
    made = write_samples(pipe, job, tmp_path / "direct", 0, [], "none", encode_sample_prompts(pipe, job))
    for index, template in enumerate(job.config.sample_prompts):
        frames = pipe(
            prompt=render_template(template, trigger=job.trigger),
            height=job.config.size,
            width=job.config.size,
            num_frames=1,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(job.config.seed + index),
            output_type="np",
        ).frames[0]
        expected = (np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(made[index])), expected), template


class PlacedEncoder:
    """Where a text encoder's weights are, and every move asked of it (this machine has no GPU to move them to)."""

    def __init__(self, device: str) -> None:
        self.device, self.moves = torch.device(device), []

    def to(self, device: str) -> PlacedEncoder:
        self.moves.append(str(device))
        self.device = torch.device(device)
        return self


def test_a_text_encoder_resident_on_a_gpu_waits_in_cpu_memory_and_comes_back_even_after_an_error():
    class Pipe:
        text_encoder = PlacedEncoder("cuda:0")

    with pytest.raises(RuntimeError, match="out of memory"), text_encoder_off_the_gpu(Pipe):
        assert Pipe.text_encoder.device.type == "cpu"
        raise RuntimeError("out of memory")
    assert Pipe.text_encoder.moves == ["cpu", "cuda:0"] and str(Pipe.text_encoder.device) == "cuda:0"

    # On the CPU, or under offload (accelerate's hook moves it between calls), it stays where it is.
    Pipe.text_encoder = PlacedEncoder("cpu")
    with text_encoder_off_the_gpu(Pipe):
        pass
    hooked = PlacedEncoder("cuda:0")
    hooked._hf_hook = object()  # type: ignore[attr-defined]
    Pipe.text_encoder = hooked
    with text_encoder_off_the_gpu(Pipe):
        pass
    assert hooked.moves == [] and str(hooked.device) == "cuda:0"


def test_a_job_for_a_gpu_not_known_yet_trains_with_gradient_checkpointing():
    production = load_profile("production")
    assert production.train.gradient_checkpointing == "auto"
    job = TrainJob.for_profile("Ada", production.train, production, "cuda")
    assert job.config.gradient_checkpointing is True
    decided = production.train.model_copy(update={"gradient_checkpointing": False})
    assert TrainJob.for_profile("Ada", decided, production, "cuda").config.gradient_checkpointing is False

"""Each stage on the tiny profile, called directly (no Prefect run): real model calls, real outputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from likeness.media.tiling import tile_grid
from likeness.models import pipelines
from likeness.models.profiles import load_profile
from likeness.storage.artifacts import get_bytes, load_image, put_file, put_image
from tests.records import dataset_item, dataset_ref

TINY = load_profile("tiny")


@pytest.fixture
def reference(likeness_env, face_photo):
    return put_file(face_photo)


def test_the_pipeline_cache_loads_a_model_once(likeness_env):
    pipelines.clear()
    first = pipelines.get_pipeline("captioner", TINY)
    assert pipelines.get_pipeline("captioner", TINY) is first
    assert pipelines.load_counts == {"captioner": 1}


def test_a_released_model_is_freed_and_the_others_stay(likeness_env):
    import gc
    import weakref

    pipelines.clear()
    editor = weakref.ref(pipelines.get_pipeline("editor", TINY))
    captioner = pipelines.get_pipeline("captioner", TINY)
    pipelines.release("editor")
    gc.collect()
    # Nothing else holds the editor: its memory is returned when the flow moves on to the next stage.
    assert editor() is None
    assert pipelines.get_pipeline("captioner", TINY) is captioner
    pipelines.get_pipeline("editor", TINY)
    assert pipelines.load_counts == {"editor": 2, "captioner": 1}


def test_variations_edit_the_reference(reference):
    from tasks.variations import edit_variation

    side = edit_variation.fn([reference], "side view", 64, 64, TINY.edit, 1, TINY, "side.png")
    back = edit_variation.fn([reference], "back view", 64, 64, TINY.edit, 1, TINY, "back.png")
    assert load_image(side).size == (TINY.edit.size, TINY.edit.size)
    assert side.sha256 != back.sha256
    assert edit_variation.fn([reference], "side view", 64, 64, TINY.edit, 1, TINY, "side.png") == side


def test_upscale_reaches_the_target_and_a_later_start_step_runs_fewer_steps(reference):
    from likeness.media.imaging import square
    from tasks.upscale import upscale_image

    small = put_image(square(load_image(reference), 32), "small.png")
    transformer = pipelines.get_pipeline("refiner", TINY).transformer
    calls = []
    hook = transformer.register_forward_pre_hook(lambda module, args: calls.append(1))

    def refine(start_step: int) -> tuple[int, bytes]:
        calls.clear()
        config = TINY.upscale.model_copy(update={"start_step": start_step, "steps": 4})
        result = upscale_image.fn(small, config, "photo of Ada", 0, TINY, None)
        refined = load_image(result.image)
        assert refined.size == (TINY.upscale.size, TINY.upscale.size)
        assert result.start_step == start_step  # no reference face: the configured start step
        return len(calls), refined.tobytes()

    try:
        late, early = refine(3), refine(0)
    finally:
        hook.remove()
    # 128 px in 64 px tiles overlapping by 16: 3 x 3 tiles, each denoised for the steps after the start step.
    assert (late[0], early[0]) == (9 * 1, 9 * 4)
    assert late[1] != early[1]


def test_a_tile_refined_on_its_own_is_the_tile_the_whole_images_refine_blends_in(reference):
    from likeness.media.tiling import tile_grid
    from tasks.upscale import _prompt_inputs, refine

    refiner = pipelines.get_pipeline("refiner", TINY)
    config, prompt = TINY.upscale, _prompt_inputs(refiner, "photo of Ada")
    image = load_image(reference).convert("RGB").resize((128, 128))
    calls = []
    hook = refiner.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        whole = refine(refiner, image, prompt, config, 2, seed=7)
        # The guard's refine of one tile: the same seed, and nothing but the tile's own pixels.
        box = tile_grid(128, 128, config.tile, config.overlap)[4].box
        alone = refine(refiner, image.crop(box), prompt, config, 2, seed=7)
        calls.clear()
        reused = refine(refiner, image, prompt, config, 2, 7, done={box: alone})
    finally:
        hook.remove()
    assert len(calls) == (9 - 1) * (config.steps - 2)  # the other eight tiles, two steps each
    assert reused.tobytes() == whole.tobytes()


def test_captions_start_with_the_trigger_and_what_the_stage_knows(reference):
    from tasks.caption import caption_image

    caption = caption_image.fn(reference, "Ada", ["side view", "neutral expression", "full body"], TINY.caption, TINY)
    assert caption.startswith("Ada, side view, neutral expression, full body, ")
    assert len(caption) > len("Ada, side view, neutral expression, full body, ")


@pytest.fixture
def dataset(reference):
    images = [load_image(reference).rotate(angle).resize((64, 64)) for angle in (0, 90)]
    items = tuple(
        dataset_item(variation, put_image(image, f"{variation}.png"), f"Ada, {variation}")
        for variation, image in zip(("front", "side"), images, strict=True)
    )
    return dataset_ref(reference, items).training_set()


def test_training_checkpoints_every_k_steps_and_leaves_the_pipeline_clean(dataset, tmp_path):
    from likeness.training.native import ADAPTER
    from tasks.train import fit_lora

    config = TINY.train.model_copy(update={"steps": 5, "checkpoint_every": 2})
    lora = fit_lora.fn(dataset, config, TINY)
    assert [c.step for c in lora.checkpoints] == [2, 4, 5]
    assert [c.weights.filename for c in lora.checkpoints] == [
        "Ada_000000002.safetensors",
        "Ada_000000004.safetensors",
        "Ada_000000005.safetensors",
    ]
    assert all(np.isfinite(c.loss) for c in lora.checkpoints)
    # Samples of every checkpoint, one per sample prompt, for choosing the best.
    assert [len(c.samples) for c in lora.checkpoints] == [len(config.sample_prompts)] * 3
    path = tmp_path / "final.safetensors"
    path.write_bytes(get_bytes(lora.final.weights))
    with safe_open(str(path), "pt") as weights:
        keys = list(weights.keys())
    # The original Wan layout, which ComfyUI maps and diffusers converts on load.
    assert keys and all(key.startswith("diffusion_model.blocks.") and "lora_" in key for key in keys)
    transformer = pipelines.get_pipeline("video", TINY).transformer
    assert ADAPTER not in getattr(transformer, "peft_config", {})


def test_training_stops_where_the_identity_scores_went_flat_and_the_record_says_so(dataset, tmp_path, capsys):
    from likeness.cli.flow_run import print_summary
    from likeness.config import StopWhenFlat
    from likeness.run.outputs import lora_entries
    from likeness.run.pictures import checkpoints_markdown
    from tasks.train import fit_lora

    # Samples at steps 2, 4 and 6. The tiny model's samples are noise with no face in them, so no checkpoint scores
    # and none is better: flat from step 2, but min_step holds training to step 4.
    rule = StopWhenFlat(min_step=4, patience=1)
    config = TINY.train.model_copy(update={"steps": 6, "checkpoint_every": 2, "stop_when_flat": rule})
    lora = fit_lora.fn(dataset, config, TINY)
    assert [c.step for c in lora.checkpoints] == [2, 4]
    assert [len(c.samples) for c in lora.checkpoints] == [len(config.sample_prompts)] * 2
    assert lora.stopped_early is not None and lora.stopped_early.step == 4
    assert lora.stopped_early.reason == (
        "no identity score in the 2 sampled checkpoints so far (steps 2-4): no face in more than half of each "
        "one's samples"
    )
    # The record marks the checkpoint training stopped at, with why; the summary and the UI's page say it.
    entries = lora_entries(lora)
    assert [entry.get("stopped_early") for entry in entries] == [None, lora.stopped_early.reason]
    last_run = {"model_loads": {}, "seconds": 1}
    print_summary(
        tmp_path, {"identity": {"trigger": "Ada"}, "dataset": [], "lora": entries, "renders": [], "last_run": last_run}
    )
    assert "stopped early" in capsys.readouterr().out
    assert "Training stopped early at step 4: no identity score" in checkpoints_markdown(lora)


def test_the_training_flow_refuses_stop_when_flat_where_it_cannot_apply_before_training(dataset):
    from flows.train import train_lora
    from likeness.config import InvalidSettings, StopWhenFlat

    config = TINY.train.model_copy(update={"stop_when_flat": StopWhenFlat(min_step=3, patience=1)})
    stylised = dataset.model_copy(update={"identity_checked": False})
    with pytest.raises(InvalidSettings, match="train.stop_when_flat stops on the identity score"):
        train_lora.fn(stylised, config, TINY)
    with pytest.raises(InvalidSettings, match="train.stop_when_flat needs our trainer"):
        train_lora.fn(dataset, config, TINY, "runpod-aitoolkit")


def test_render_applies_the_lora_at_its_scale(dataset):
    from tasks.render import render_media
    from tasks.train import fit_lora

    lora = fit_lora.fn(dataset, TINY.train.model_copy(update={"steps": 2, "checkpoint_every": 2}), TINY)
    # Scale 0 is rendered again after scale 1: the adapter must not outlive its render.
    outputs = {
        scale: np.asarray(
            load_image(
                render_media.fn(
                    lora.final.weights,
                    "image",
                    "Ada smiling",
                    TINY.render.model_copy(update={"lora_scale": scale}),
                    0,
                    TINY,
                ).output
            ),
            dtype=float,
        )
        for scale in (0.0, 1.0, 0.0)
    }
    pipe = pipelines.get_pipeline("video", TINY)
    import torch

    base = pipe(
        "Ada smiling",
        negative_prompt=TINY.render.negative_prompt,
        height=64,
        width=64,
        num_frames=1,
        num_inference_steps=TINY.render.steps,
        guidance_scale=TINY.render.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).frames[0][0]
    base_png = np.asarray(Image.fromarray((np.clip(base, 0, 1) * 255).round().astype(np.uint8)), dtype=float)
    assert np.array_equal(outputs[0.0], base_png)
    assert not np.array_equal(outputs[1.0], base_png)


def test_a_video_render_is_an_mp4_of_the_requested_frames(dataset, tmp_path):
    from likeness.media.imaging import decode_mp4
    from tasks.render import render_media
    from tasks.train import fit_lora

    lora = fit_lora.fn(dataset, TINY.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), TINY)
    config = TINY.render.model_copy(update={"video_frames": 9})
    item = render_media.fn(lora.final.weights, "video", "Ada waves", config, 3, TINY)
    path = tmp_path / "video.mp4"
    path.write_bytes(get_bytes(item.output))
    assert decode_mp4(path).shape == (9, 64, 64, 3)
    assert (item.kind, item.frames, item.seed, item.lora) == ("video", 9, 3, lora.final.weights)


def test_the_training_loss_handles_wan22_5b_per_token_timesteps(likeness_env, models_dir):
    """Wan 2.2 TI2V-5B (production) sets expand_timesteps: one timestep per latent token."""
    import torch
    from diffusers import WanPipeline

    from likeness.models.profiles import model_path
    from likeness.settings import get_settings
    from likeness.training.native import flow_matching_loss

    pipe = WanPipeline.from_pretrained(model_path("video", TINY, get_settings()), dtype=torch.float32)
    latents = torch.randn(1, 16, 1, 8, 8)
    text = torch.randn(1, 8, 32)
    losses = {}
    for expand in (False, True):
        pipe.register_to_config(expand_timesteps=expand)
        generator = torch.Generator().manual_seed(0)
        sigma, noise = torch.rand((1,), generator=generator), torch.randn(latents.shape, generator=generator)
        loss = flow_matching_loss(pipe.transformer, pipe, latents, text, sigma, noise)
        loss.backward()
        losses[expand] = loss.item()
    assert all(np.isfinite(value) for value in losses.values())
    assert losses[False] == pytest.approx(losses[True], rel=1e-4)


def test_each_checkpoint_holds_the_weights_after_its_optimizer_step(dataset, tmp_path):
    from tasks.train import fit_lora

    def lora_b(weights) -> dict[str, np.ndarray]:
        path = tmp_path / weights.filename
        path.write_bytes(get_bytes(weights))
        with safe_open(str(path), "np") as tensors:
            return {key: tensors.get_tensor(key) for key in tensors.keys() if "lora_B" in key}

    one = fit_lora.fn(dataset, TINY.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), TINY)
    two = fit_lora.fn(dataset, TINY.train.model_copy(update={"steps": 2, "checkpoint_every": 1}), TINY)
    # peft starts lora_B at zero: a checkpoint saved before its step would hold zeros at step 1.
    after_one = lora_b(one.final.weights)
    assert after_one and all(np.abs(tensor).max() > 0 for tensor in after_one.values())
    # The same tensors at step 1 (the header differs: it records the run's settings, steps among them).
    first_of_two = lora_b(two.checkpoints[0].weights)
    assert first_of_two.keys() == after_one.keys()
    assert all(np.array_equal(first_of_two[key], after_one[key]) for key in after_one)
    assert not all(np.array_equal(lora_b(two.final.weights)[key], after_one[key]) for key in after_one)


def test_an_edit_follows_its_seed(reference):
    from tasks.variations import edit_variation

    seeds = {
        seed: edit_variation.fn([reference], "smile", 64, 64, TINY.edit, seed, TINY, "smile.png") for seed in (1, 2)
    }
    assert seeds[1].sha256 != seeds[2].sha256
    assert edit_variation.fn([reference], "smile", 64, 64, TINY.edit, 1, TINY, "smile.png").sha256 == seeds[1].sha256


def test_model_work_in_a_worker_thread_stops_at_its_next_step_once_the_run_is_interrupted(reference, dataset):
    import os
    import signal
    import threading

    from likeness.run.interrupts import Interrupted, StageStopped, interruptible
    from tasks.render import render_media
    from tasks.train import fit_lora
    from tasks.variations import edit_variation

    one_step = TINY.train.model_copy(update={"steps": 1, "checkpoint_every": 1})
    lora = fit_lora.fn(dataset, one_step, TINY).final.weights
    outcomes: list[object] = []

    def work() -> None:
        for stage in (
            lambda: edit_variation.fn([reference], "front view", 64, 64, TINY.edit, 0, TINY, "front.png"),
            lambda: fit_lora.fn(dataset, TINY.train, TINY),
            lambda: render_media.fn(lora, "image", "Ada", TINY.render, 0, TINY),
        ):
            try:
                outcomes.append(stage())
            except StageStopped as stopped:
                outcomes.append(stopped)

    with interruptible(on_forced_exit=lambda interrupt: None, grace_s=60):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.pause()
        except Interrupted as interrupt:
            assert interrupt.exit_code == 130
        # Threads get no signal: they see the interrupt at their next denoising step.
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(timeout=120)
    assert [type(outcome) for outcome in outcomes] == [StageStopped, StageStopped, StageStopped]
    assert edit_variation.fn([reference], "front view", 64, 64, TINY.edit, 0, TINY, "front.png").sha256


def test_the_editor_loads_with_its_lightning_lora_fused_and_its_authors_scheduler(likeness_env, tmp_path):
    import math

    import torch
    from diffusers import QwenImageTransformer2DModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file, save_file

    from likeness.models.profiles import lora_path, model_path
    from likeness.models.qwen_edit import fuse_lora_file, load_editor
    from likeness.settings import get_settings

    pipelines.clear()
    editor = pipelines.get_pipeline("editor", TINY)
    config = editor.scheduler.config
    assert (config.base_shift, config.max_shift) == (math.log(3), math.log(3))
    assert (config.shift, config.shift_terminal, config.time_shift_type) == (1.0, None, "exponential")
    assert config.use_dynamic_shifting
    # Fused and unloaded: no LoRA layers are left, so a step costs what a base step costs.
    assert not any(isinstance(module, BaseTunerLayer) for module in editor.transformer.modules())

    # The fused weight is the base weight plus (alpha / rank) * up @ down, read from the file in its real layout.
    file = lora_path("editor", TINY, get_settings())
    lora = load_file(file)
    assert all(key.startswith("transformer_blocks.") for key in lora)
    base = QwenImageTransformer2DModel.from_pretrained(model_path("editor", TINY, get_settings()) / "transformer")
    name = "transformer_blocks.1.attn.to_q"
    down, up = lora[f"{name}.lora_down.weight"].float(), lora[f"{name}.lora_up.weight"].float()
    delta = float(lora[f"{name}.alpha"]) / down.shape[0] * up @ down
    fused = editor.transformer.get_submodule(name).weight
    assert torch.allclose(fused, base.get_submodule(name).weight + delta, atol=1e-5)

    # A LoRA made for another model matches none of the editor's layers and is refused, not silently skipped.
    foreign = tmp_path / "foreign.safetensors"
    save_file({key.replace("transformer_blocks", "single_blocks"): value for key, value in lora.items()}, foreign)
    plain = load_editor(model_path("editor", TINY, get_settings()), torch.float32)
    with pytest.raises(ValueError, match=r"foreign.safetensors: none of its 24 LoRA layers match"):
        fuse_lora_file(plain, foreign)
    # One that matches only some of them is refused too: half a distillation LoRA would make wrong images.
    partial = tmp_path / "partial.safetensors"
    save_file({key.replace("blocks.1.", "blocks.7."): value for key, value in lora.items()}, partial)
    with pytest.raises(ValueError, match=r"partial.safetensors: 12 of its 24 LoRA layers match"):
        fuse_lora_file(plain, partial)


def test_the_guard_judges_start_steps_on_the_face_and_refines_the_whole_image_once(likeness_env, monkeypatch):
    from PIL import ImageFilter

    import tasks.upscale as upscale
    from tests.photos import grace_hopper

    # Random-weight ESRGAN and FLUX turn any face to noise, so the tiny models cannot show the guard at work on a
    # face: here an honest resize upscales, and the refine blurs the more steps it runs, as drift grows in a real one.
    def resize(model, image, tile=None, overlap=0):
        return image.resize((image.width * 4, image.height * 4), Image.Resampling.LANCZOS)

    calls = []

    def blurring_refine(refiner, image, prompt_inputs, config, start_step, seed, subject=None, done=None):
        assert done is None  # no 64 px tile holds the face: nothing of the guard's is reused
        calls.append((image.size, start_step))
        return image.filter(ImageFilter.GaussianBlur((config.steps - start_step) * 0.8))

    monkeypatch.setattr(upscale, "esrgan_upscale", resize)
    monkeypatch.setattr(upscale, "refine", blurring_refine)
    face = upscale.main_face_of(grace_hopper(), (0.0,) * 128)
    assert face is not None
    reference = face.embedding
    # A full-body-like framing: the head is small in the frame, as the guard's region is small in the image.
    shot = Image.new("RGB", (192, 256), (128, 128, 128))
    shot.paste(grace_hopper().resize((96, 112)), (48, 8))
    edit = put_image(shot, "front.png")
    config = TINY.upscale.model_copy(
        update={"size": 1024, "steps": 20, "start_step": 16, "start_steps": (10, 18), "identity_tolerance": 0.05}
    )
    result = upscale.upscale_image.fn(edit, config, "photo of Ada", 0, TINY, reference)

    *guard_calls, final_call = calls
    assert final_call == ((768, 1024), result.start_step)  # the whole image, once, at the chosen step
    crop_size = guard_calls[0][0]
    assert crop_size[0] * crop_size[1] < 768 * 1024 / 2  # the guard refined the face's surroundings only
    assert [(crop_size, step) for step, _ in result.tries] == guard_calls
    assert 1 <= len(result.tries) <= 4  # bisection measures at most ceil(log2(9 + 1)) of 9 candidates
    assert result.pre_refine_distance is not None and result.identity_distance is not None
    ceiling = result.pre_refine_distance + config.identity_tolerance
    chosen = dict(result.tries)[result.start_step]
    assert chosen is not None and chosen <= ceiling
    # Every earlier start step it tried drifted too far: the choice is the lowest that keeps the face.
    assert all(d is None or d > ceiling for step, d in result.tries if step < result.start_step)
    assert 10 < result.start_step <= 18
    assert load_image(result.image).size == (768, 1024)


def test_the_guard_judges_on_the_refines_own_tile_and_the_whole_image_reuses_it(likeness_env, monkeypatch):
    from PIL import ImageFilter

    import tasks.upscale as upscale
    from likeness.media.tiling import apply_tiled, tile_grid
    from tests.photos import grace_hopper

    def resize(model, image, tile=None, overlap=0):
        return image.resize((image.width * 4, image.height * 4), Image.Resampling.LANCZOS)

    refined_tiles = []  # (tile size, start step) of every tile the refine computes
    reused, outputs = [], []

    def blurring_refine(refiner, image, prompt_inputs, config, start_step, seed, subject=None, done=None):
        def blur(tile):
            refined_tiles.append((tile.size, start_step))
            return tile.filter(ImageFilter.GaussianBlur((config.steps - start_step) * 0.8))

        reused.append(dict(done or {}))
        outputs.append(apply_tiled(image, blur, config.tile, config.overlap, done=done))
        return outputs[-1]

    monkeypatch.setattr(upscale, "esrgan_upscale", resize)
    monkeypatch.setattr(upscale, "refine", blurring_refine)
    reference = upscale.main_face_of(grace_hopper(), (0.0,) * 128).embedding
    shot = Image.new("RGB", (192, 256), (128, 128, 128))
    shot.paste(grace_hopper().resize((96, 112)), (48, 8))
    config = TINY.upscale.model_copy(
        update={"size": 1024, "steps": 20, "start_step": 16, "start_steps": (10, 18), "tile": 512, "overlap": 64}
    )
    result = upscale.upscale_image.fn(put_image(shot, "front.png"), config, "photo of Ada", 0, TINY, reference)

    grid = tile_grid(768, 1024, 512, 64)  # 2 x 3 tiles of 512 px
    tries = len(result.tries)
    # Each try refines one tile of the grid, the one around the face; the whole image then refines the other five.
    assert refined_tiles[:tries] == [((512, 512), step) for step, _ in result.tries]
    assert refined_tiles[tries:] == [((512, 512), result.start_step)] * (len(grid) - 1)
    (judged,) = reused[-1]
    assert any(tile.box == judged for tile in grid)
    assert reused[:-1] == [{}] * tries
    # What the guard judged at the chosen step is what the image blends in.
    chosen = [step for step, _ in result.tries].index(result.start_step)
    assert reused[-1][judged] is outputs[chosen]
    assert 10 < result.start_step <= 18 and result.identity_distance is not None
    assert load_image(result.image).size == (768, 1024)

    # Off the tile, the guard refines the face's surroundings on their own, and the whole image all six tiles.
    on_tile = len(refined_tiles)
    for record in (refined_tiles, reused, outputs):
        record.clear()
    config = config.model_copy(update={"guard_on_tile": False})
    result = upscale.upscale_image.fn(put_image(shot, "side.png"), config, "photo of Ada", 0, TINY, reference)
    assert reused == [{}] * (len(result.tries) + 1)
    assert refined_tiles[-len(grid) :] == [((512, 512), result.start_step)] * len(grid)
    assert len(refined_tiles) > on_tile


def test_the_guard_region_grows_the_face_box_inside_the_image():
    from likeness.dataset.guard import GUARD_MARGIN, guard_region

    assert GUARD_MARGIN == 0.75
    # A full-body shot: one 1024 px tile around the face instead of the image's six.
    assert guard_region((700, 200, 860, 360), (1536, 2048), 1024, 128) == (580, 80, 980, 480)
    # Clipped at the image's edges.
    assert guard_region((10, 20, 210, 220), (1536, 2048), 1024, 128) == (0, 0, 360, 370)
    # A close-up whose grown face box takes as many tiles as the image: the whole image.
    assert guard_region((512, 204, 1536, 1228), (2048, 2048), 1024, 128) == (0, 0, 2048, 2048)
    # Small images are one tile however large the face: the whole image.
    assert guard_region((40, 40, 60, 60), (96, 128), 64, 16) != (0, 0, 96, 128)
    assert guard_region((40, 40, 60, 60), (64, 64), 64, 16) == (0, 0, 64, 64)


def test_the_guard_tile_is_the_refine_grids_tile_with_most_room_around_the_face():
    from likeness.dataset.guard import GUARD_TILE_MARGIN, guard_tile
    from likeness.media.tiling import Tile, tile_grid

    assert GUARD_TILE_MARGIN == 0.25
    # Head and shoulders at 2048x2048 (the grid's tiles start at 0, 512 and 1024): the top middle tile holds the
    # 614 px face with 205 px on every side.
    tile = guard_tile((717, 205, 1331, 819), (2048, 2048), 1024, 128)
    assert tile == Tile(512, 0, 1024, 1024)
    assert tile in tile_grid(2048, 2048, 1024, 128)
    # A full-body face near the left: of the two tiles that hold it, the one with more room.
    assert guard_tile((300, 200, 460, 360), (1536, 2048), 1024, 128) == Tile(0, 0, 1024, 1024)
    # The image's edge is room enough: a face in the corner is judged on the corner tile.
    assert guard_tile((0, 0, 160, 160), (1536, 2048), 1024, 128) == Tile(0, 0, 1024, 1024)
    # Across the 256 px overlap of a 1792 px row's two tiles (0 and 768): no tile holds all of it.
    assert guard_tile((760, 300, 1040, 580), (1792, 1024), 1024, 128) is None
    # Narrower, it fits the second tile, with 8 px more than the 70 px of room it needs.
    assert guard_tile((846, 300, 1126, 580), (1792, 1024), 1024, 128) == Tile(768, 0, 1024, 1024)
    # A close-up's face is larger than a tile.
    assert guard_tile((512, 204, 1536, 1228), (2048, 2048), 1024, 128) is None
    # An image in one tile is its own guard tile.
    assert guard_tile((20, 20, 40, 40), (64, 64), 64, 16) == Tile(0, 0, 64, 64)


@pytest.mark.slow
def test_the_2k_path_on_tiny_models_reaches_2048_px_in_bounded_tiles(reference, monkeypatch):
    import tasks.upscale as upscale

    tiles = []
    refine = upscale.refine

    def counted_refine(refiner, image, *args):
        tiles.extend(tile_grid(*image.size, config.tile, config.overlap))
        return refine(refiner, image, *args)

    monkeypatch.setattr(upscale, "refine", counted_refine)
    edit = put_image(load_image(reference).resize((48, 64)), "front.png")
    # Production's 2K size and tiling, with the tiny models: the same code path at the real output size.
    config = TINY.upscale.model_copy(update={"size": 2048, "tile": 1024, "overlap": 128})
    result = upscale.upscale_image.fn(edit, config, "photo of Ada", 0, TINY, None)
    assert load_image(result.image).size == (1536, 2048)
    assert len(tiles) == 6 and all(tile.width <= 1024 and tile.height <= 1024 for tile in tiles)


def test_permissive_refines_with_flux2_klein_through_its_inpainting_pipeline(reference):
    from tasks.upscale import upscale_image

    # The tiny profile with permissive's refiner architecture: FLUX.2 klein, which has no img2img pipeline.
    # As permissive's: no USO, which is a LoRA for FLUX.1.
    refiner = TINY.models["refiner"].model_copy(update={"source": "tiny:refiner-klein", "uso": None})
    upscale = TINY.upscale.model_copy(update={"uso": False})
    klein = TINY.model_copy(
        update={"models": {**TINY.models, "refiner": refiner}, "upscale": upscale, "name": "tiny-klein"}
    )
    refiner = pipelines.get_pipeline("refiner", klein)
    assert type(refiner).__name__ == "Flux2KleinInpaintPipeline"
    calls = []
    hook = refiner.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    config = upscale.model_copy(update={"guidance_scale": 0.0})
    try:
        result = upscale_image.fn(
            put_image(load_image(reference).resize((48, 64)), "front.png"), config, "Ada", 0, klein, None
        )
    finally:
        hook.remove()
    assert load_image(result.image).size == (96, 128)
    # 96 x 128 in 64 px tiles overlapping by 16: 2 x 3 tiles, each denoised from the start step to the end.
    assert len(calls) == 6 * (config.steps - config.start_step)

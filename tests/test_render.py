"""The render stage on the tiny profile: lineage inside the files, post FX, identity scores, the contact sheet,
per-prompt options and the chunked video upscale."""

from __future__ import annotations

import io
import json
import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from likeness.inputs import InvalidInput
from likeness.media.imaging import decode_mp4, read_mp4_metadata
from likeness.models.profiles import load_profile
from likeness.render.jobs import plan_renders
from likeness.render.prompt_files import PromptEntry
from likeness.storage.artifacts import get_bytes, put_file
from tests.records import dataset_item, dataset_ref

TINY = load_profile("tiny")


@pytest.fixture
def lora(likeness_env, face_photo):
    from likeness.storage.artifacts import load_image, put_image
    from tasks.train import fit_lora

    reference = put_file(face_photo)
    image = load_image(reference).resize((64, 64))
    items = (dataset_item("front", put_image(image, "front.png"), "Ada, front"),)
    training = dataset_ref(reference, items).training_set()
    return fit_lora.fn(training, TINY.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), TINY).final.weights


def ffmpeg_info(tmp_path, data: bytes) -> str:
    path = tmp_path / "probe.mp4"
    path.write_bytes(data)
    return subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True).stderr


def test_an_image_carries_its_lineage_and_post_fx_are_deterministic(lora):
    from tasks.render import render_media

    plain = render_media.fn(lora, "image", "Ada smiling", TINY.render, 5, TINY)
    looked = TINY.render.model_copy(update={"fx": "seed-look"})
    first, again = (render_media.fn(lora, "image", "Ada smiling", looked, 5, TINY) for _ in range(2))
    assert get_bytes(first.output) == get_bytes(again.output)
    assert first.fx == "seed-look" and plain.fx == "none"
    pixels = {name: np.asarray(Image.open(io.BytesIO(get_bytes(item.output)))) for name, item in
              (("plain", plain), ("fx", first))}  # fmt: skip
    assert pixels["plain"].shape == pixels["fx"].shape == (64, 64, 3)
    assert not np.array_equal(pixels["plain"], pixels["fx"])

    png = Image.open(io.BytesIO(get_bytes(first.output)))
    record = json.loads(png.text["likeness"])
    assert record["prompt"] == "Ada smiling" and record["seed"] == 5 and record["fx"] == "seed-look"
    assert record["model"] == "tiny:video" and record["loras"] == [{"file": lora.filename, "sha256": lora.sha256,
                                                                    "scale": 1.0}]  # fmt: skip
    assert png.text["parameters"].startswith("Ada smiling\nNegative prompt: blurry")
    assert "Seed: 5, Size: 64x64, Model: tiny:video" in png.text["parameters"]


def test_a_video_is_h264_yuv420p_with_its_lineage_and_fx_on_every_frame(lora, tmp_path):
    from tasks.render import render_media

    config = TINY.render.model_copy(update={"video_frames": 9, "fx": "seed-look"})
    item = render_media.fn(lora, "video", "Ada waves", config, 3, TINY)
    info = ffmpeg_info(tmp_path, get_bytes(item.output))
    assert re.search(r"Video: h264 .*yuv420p", info) and "64x64" in info
    tags = read_mp4_metadata(tmp_path / "probe.mp4")
    record = json.loads(tags["comment"])
    assert tags["title"] == "Ada waves" and record["frames"] == 9 and record["fx"] == "seed-look"
    assert record["negative_prompt"] == TINY.render.negative_prompt and record["loras"][0]["file"] == lora.filename
    assert (tmp_path / "probe.mp4").is_file() and decode_mp4(tmp_path / "probe.mp4").shape == (9, 64, 64, 3)
    assert (item.kind, item.fps, item.frames) == ("video", TINY.render.fps, 9)


def test_a_render_is_scored_against_the_reference_by_its_best_and_median_frame(likeness_env, face_photo):
    from likeness.records import RenderItem
    from tasks.render_review import render_label, renders_contact_sheet, score_render

    reference = put_file(face_photo)
    common = {"prompt": "p", "negative_prompt": "", "seed": 0, "steps": 1, "size": 64, "lora": reference,
              "lora_scale": 1.0, "model": "tiny:video"}  # fmt: skip
    # The reference itself as an "image render" scores about 0; the tiny model's noise has no face.
    image = score_render.fn(RenderItem(kind="image", frames=1, output=reference, **common), reference)
    assert image.identity_distance is not None and image.identity_distance < 0.1
    assert (image.faces_found, image.frames_scored) == (1, 1)
    photo = np.asarray(Image.open(face_photo).convert("RGB").resize((192, 192)))
    noise = np.full_like(photo, 128)
    frames = np.stack([photo, noise, noise, photo, noise])
    from likeness.media.imaging import encode_mp4
    from likeness.storage.artifacts import put_bytes

    video_ref = put_bytes(encode_mp4(frames, 8), "clip.mp4")
    video = score_render.fn(RenderItem(kind="video", frames=5, output=video_ref, **common), reference)
    assert video.frames_scored == 5 and video.faces_found == 2
    # Three of five frames without a face: the median is a miss, the best frame is close.
    assert video.identity_median is None and video.identity_distance < 0.45
    assert render_label(video).startswith("video s0: best 0.") and render_label(video).endswith("median miss")
    assert renders_contact_sheet([image, video]).size == (2 * 256, 256 + 18)


def test_prompt_options_replace_the_run_settings_and_bad_ones_are_refused_before_rendering():
    entries = [
        PromptEntry(prompt="{trigger} on a beach", seed=9, fx="seed-look"),
        PromptEntry(prompt="{trigger} walks", frames=9, lora_scale=0.5),
    ]
    image, video = plan_renders(TINY.render, "Ada", entries, TINY.limits.render)
    assert (image.kind, image.prompt, image.seed, image.config.fx) == ("image", "Ada on a beach", 9, "seed-look")
    assert (video.kind, video.config.video_frames, video.config.lora_scale) == ("video", 9, 0.5)
    assert video.seed == TINY.render.seed
    for entry, message in (
        (PromptEntry(prompt="{trigger} runs", frames=8), "prompt 1 ('{trigger} runs'): video_frames must be 4k+1"),
        (PromptEntry(prompt="{trigger}", fx="sepia"), "unknown post FX preset 'sepia'"),
        (PromptEntry(prompt="{trigger} at {place}"), "{place}"),
        (PromptEntry(prompt="{trigger} runs", frames=45), "prompt 1.video_frames=45 is above 33"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(message)):
            plan_renders(TINY.render, "Ada", [entry], TINY.limits.render)
    # Without a prompts file: the config's templates.
    assert [job.kind for job in plan_renders(TINY.render, "Ada")] == ["image", "video"]
    # A video upscale whose memory bound not one frame fits is refused before anything renders.
    tight = TINY.render.model_copy(update={"upscale_long_side": 512, "upscale_memory_mb": 1})
    with pytest.raises(InvalidInput, match="render.upscale_memory_mb=1 is too little for the video upscale to 512 px"):
        plan_renders(tight, "Ada")
    # An empty list: nothing but what else the run asks for (`--animate` alone).
    assert plan_renders(TINY.render, "Ada", []) == []


def test_a_video_is_upscaled_in_chunks_to_the_configured_long_side(lora, tmp_path):
    from tasks.render import render_media
    from tasks.upscale_video import upscale_render

    config = TINY.render.model_copy(update={"video_frames": 9, "upscale_long_side": 256, "upscale_memory_mb": 64})
    item = render_media.fn(lora, "video", "Ada waves", config, 0, TINY)
    upscaled = upscale_render.fn(item.output, config.fps, config, TINY)
    assert upscaled.filename.endswith("_256p.mp4")
    path = tmp_path / upscaled.filename
    path.write_bytes(get_bytes(upscaled))
    assert decode_mp4(path).shape == (9, 256, 256, 3)
    assert "yuv420p" in ffmpeg_info(tmp_path, get_bytes(upscaled))
    record = json.loads(read_mp4_metadata(path)["comment"])
    assert record["prompt"] == "Ada waves" and record["upscaled"] == {"long_side": 256, "model": "tiny:upscaler"}


def test_a_profile_for_a_small_gpu_turns_on_the_vae_memory_modes(likeness_env, tmp_path):
    from likeness.models.pipelines import get_pipeline

    path = tmp_path / "tiny-small-gpu.yaml"
    path.write_text("extends: tiny\nname: tiny-small-gpu\nvae_tiling: true\nvae_slicing: true\noffload: sequential\n")
    profile = load_profile(str(path))
    pipe = get_pipeline("video", profile)
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert profile.output_identity() != TINY.output_identity()
    # On the CPU nothing is offloaded: the pipeline runs where it was loaded.
    assert pipe.transformer.device.type == "cpu"


def test_a14b_renders_in_4_euler_steps_with_the_lightx2v_loras_beside_the_character_lora(likeness_env):
    from likeness.models.pipelines import get_pipeline
    from likeness.models.speed_loras import speed_loras_on
    from likeness.storage.artifacts import put_image
    from tasks.render import render_media

    a14b = load_profile("tiny-a14b")
    assert (a14b.render.steps, a14b.render.guidance_scale) == (4, 1.0)
    pipe = get_pipeline("video", a14b)
    original = pipe.scheduler
    with speed_loras_on(pipe, a14b.models["video"]) as adapters:
        pipe.scheduler.set_timesteps(4)
        # lightx2v's ladder: sigmas 1, .75, .5, .25 shifted by 5; the high-noise expert takes t >= 875.
        assert pipe.scheduler.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.33, 625.0], abs=0.01)
        assert (
            adapters and adapters[0] in pipe.transformer.peft_config and adapters[0] in pipe.transformer_2.peft_config
        )
    assert pipe.scheduler is original and not getattr(pipe.transformer, "peft_config", {})

    from tasks.train import fit_lora

    image = put_image(Image.new("RGB", (64, 64), "tan"), "tan.png")
    training = dataset_ref(image, (dataset_item("front", image, "Ada, front"),)).training_set()
    lora = fit_lora.fn(training, a14b.train.model_copy(update={"steps": 2, "checkpoint_every": 2}), a14b).final

    def render(**update):
        config = a14b.render.model_copy(update=update)
        item = render_media.fn(lora.weights, "image", "Ada", config, 0, a14b, lora.low_noise)
        return np.asarray(Image.open(io.BytesIO(get_bytes(item.output))), dtype=float)

    both, no_speed, neither = render(), render(speed_lora_scale=0.0), render(speed_lora_scale=0.0, lora_scale=0.0)
    assert not np.array_equal(both, no_speed) and not np.array_equal(no_speed, neither)
    assert np.array_equal(render(), both)
    # The record inside the file names the speed LoRAs and their strength beside the character's: 1.0 where
    # neither the settings nor a strength probe chose one (the profile leaves it open).
    assert a14b.render.speed_lora_scale is None
    item = render_media.fn(lora.weights, "image", "Ada", a14b.render, 0, a14b, lora.low_noise)
    with Image.open(io.BytesIO(get_bytes(item.output))) as image:
        record, parameters = json.loads(image.text["likeness"]), image.text["parameters"]
    speed = [entry for entry in record["loras"] if entry.get("kind") == "speed"]
    spec = a14b.models["video"].speed_loras
    assert [(entry["expert"], entry["file"], entry["scale"]) for entry in speed] == [
        (expert, spec[expert].file, 1.0) for expert in ("high_noise", "low_noise")
    ]
    assert all(f"{spec[expert].file}:1.0" in parameters for expert in spec)
    assert [use.expert for use in item.speed_loras] == ["high_noise", "low_noise"]


def test_a_still_comes_to_life_with_image_to_video_and_its_speed_loras(likeness_env, tmp_path):
    from likeness.storage.artifacts import put_image
    from tasks.render import animate_still
    from tasks.train import fit_lora

    a14b = load_profile("tiny-a14b")
    still = put_image(Image.new("RGB", (64, 64), "tan"), "still.png")
    training = dataset_ref(still, (dataset_item("front", still, "Ada, front"),)).training_set()
    lora = fit_lora.fn(training, a14b.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), a14b).final
    config = a14b.render.model_copy(update={"video_frames": 9})
    item = animate_still.fn(still, lora.weights, "Ada waves", config, 2, a14b, lora.low_noise)
    assert (item.kind, item.frames, item.model, item.low_noise_lora) == ("video", 9, "tiny:animator", lora.low_noise)
    path = tmp_path / item.output.filename
    path.write_bytes(get_bytes(item.output))
    assert decode_mp4(path).shape == (9, 64, 64, 3)
    comment = json.loads(read_mp4_metadata(path)["comment"])
    assert comment["model"] == "tiny:animator"
    animator_speed = a14b.models["animator"].speed_loras
    assert [entry["file"] for entry in comment["loras"] if entry.get("kind") == "speed"] == [
        animator_speed[expert].file for expert in ("high_noise", "low_noise")
    ]
    # Another still, another clip.
    other = put_image(Image.new("RGB", (64, 64), "navy"), "other.png")
    moved = animate_still.fn(other, lora.weights, "Ada waves", config, 2, a14b, lora.low_noise)
    assert moved.output.sha256 != item.output.sha256

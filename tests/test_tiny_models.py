"""The tiny profile: each role loads with its production call and gives outputs of the right
shape and type, deterministically; builds are idempotent and reproducible."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from likeness.models.tiny import TINY_ROLES, build_tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def reference_image():
    # A non-square gradient, so the pipelines' aspect-ratio handling is exercised.
    x = np.linspace(0, 255, 80, dtype=np.uint8)
    y = np.linspace(0, 255, 60, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (60, 1)), np.tile(y[:, None], (1, 80)), np.full((60, 80), 128, np.uint8)], axis=-1)
    return Image.fromarray(rgb, "RGB")


def generator():
    return torch.Generator().manual_seed(0)


def folder_digest(folder):
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_build_is_complete_small_and_idempotent(tiny):
    assert set(tiny) == set(TINY_ROLES)
    for role, folder in tiny.items():
        assert (folder / ".complete").is_file()
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        assert size < 5_000_000, f"{role} is {size} bytes"
    # Only the finished role folders remain: staging folders are renamed or removed.
    root = tiny["editor"].parent
    assert sorted(p.name for p in root.iterdir()) == sorted(TINY_ROLES)

    marker_mtimes = {role: (folder / ".complete").stat().st_mtime_ns for role, folder in tiny.items()}
    assert build_tiny_models(root) == tiny
    assert {role: (f / ".complete").stat().st_mtime_ns for role, f in tiny.items()} == marker_mtimes


def test_a_role_another_process_built_meanwhile_is_kept_as_it_is(tmp_path):
    from likeness.models.tiny import _build_atomically

    folder = tmp_path / "editor"

    def build_while_another_process_finishes(staging):
        (staging / "ours").write_text("ours")
        folder.mkdir()
        (folder / "theirs").write_text("theirs")
        (folder / ".complete").write_text("built\n")

    _build_atomically(folder, build_while_another_process_finishes)
    # Theirs may be loading already: it stays, and ours is gone with its staging folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["editor"]
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "theirs"]


def test_two_builds_are_byte_identical(tiny, tmp_path):
    rebuilt = build_tiny_models(tmp_path, roles=["editor", "video"])
    for role in ("editor", "video"):
        assert folder_digest(rebuilt[role]) == folder_digest(tiny[role])


def test_editor(tiny, reference_image):
    from likeness.models.qwen_edit import QwenEditPlusPipeline

    def edit(pipe):
        return pipe(
            image=[reference_image], prompt="a photo of a woman smiling", negative_prompt=" ", true_cfg_scale=2.0,
            num_inference_steps=2, height=64, width=64, generator=generator(),
        ).images[0]  # fmt: skip

    pipe = QwenEditPlusPipeline.from_pretrained(tiny["editor"], dtype=torch.float32)
    # The profile caps the condition-image areas (diffusers' defaults are 1024*1024 and 384*384).
    assert (pipe.config.vae_image_area, pipe.config.vl_image_area) == (64 * 64, 56 * 56)
    first = edit(pipe)
    assert isinstance(first, Image.Image) and first.size == (64, 64) and first.mode == "RGB"

    reloaded = QwenEditPlusPipeline.from_pretrained(tiny["editor"], dtype=torch.float32)
    assert np.array_equal(np.asarray(edit(reloaded)), np.asarray(first))

    # The areas are ordinary load-time overrides; the diffusers module constants stay untouched.
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus

    bigger = QwenEditPlusPipeline.from_pretrained(tiny["editor"], dtype=torch.float32, vae_image_area=128 * 128)
    assert bigger.config.vae_image_area == 128 * 128
    assert edit(bigger).size == (64, 64)
    assert pipeline_qwenimage_edit_plus.VAE_IMAGE_SIZE == 1024 * 1024
    assert pipeline_qwenimage_edit_plus.CONDITION_IMAGE_SIZE == 384 * 384


def test_refiner(tiny, reference_image):
    from diffusers import FluxImg2ImgPipeline

    def refine(pipe):
        return pipe(
            prompt="a photo of a man in a park", image=reference_image.resize((128, 128)), strength=0.4,
            num_inference_steps=4, height=128, width=128, guidance_scale=3.5, generator=generator(),
        ).images[0]  # fmt: skip

    pipe = FluxImg2ImgPipeline.from_pretrained(tiny["refiner"], dtype=torch.float32)
    first = refine(pipe)
    assert isinstance(first, Image.Image) and first.size == (128, 128)
    assert np.array_equal(np.asarray(refine(pipe)), np.asarray(first))


def test_upscaler(tiny):
    from likeness.models.spandrel_compat import import_spandrel

    spandrel = import_spandrel()
    descriptor = spandrel.ModelLoader().load_from_file(tiny["upscaler"] / "model.safetensors")
    assert isinstance(descriptor, spandrel.ImageModelDescriptor)
    assert descriptor.architecture.name == "ESRGAN" and descriptor.scale == 4
    with torch.no_grad():
        out = descriptor(torch.rand(1, 3, 32, 32, generator=generator()))
    assert out.shape == (1, 3, 128, 128)


def test_spandrel_import_leaves_no_torchvision_behind():
    from likeness.models.spandrel_compat import import_spandrel

    assert import_spandrel().__name__ == "spandrel"
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
    assert importlib.util.find_spec("torchvision") is None
    from transformers.utils import is_torchvision_available

    assert not is_torchvision_available()


def test_captioner(tiny, reference_image):
    from transformers import Qwen3VLForConditionalGeneration

    from likeness.dataset.captions import caption_messages
    from likeness.models.qwen_vl import load_qwen3_vl_processor

    processor = load_qwen3_vl_processor(tiny["captioner"])
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny["captioner"]).eval()
    assert model.config.model_type == "qwen3_vl"
    chat = processor.apply_chat_template(
        caption_messages("qwen3_vl", "Describe the pose."), tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[chat], images=[reference_image], return_tensors="pt")
    assert inputs["pixel_values"].ndim == 2 and int(inputs["image_grid_thw"].prod()) == inputs["pixel_values"].shape[0]
    out = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 12
    caption = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert isinstance(caption, str) and caption.strip()  # random weights: word salad, but text


def test_video_frames_and_lora_round_trip(tiny, tmp_path):
    from diffusers import WanPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    def render(pipe, num_frames=1):
        return pipe(
            prompt="a woman walking in a park", negative_prompt="blurry", height=64, width=64,
            num_frames=num_frames, num_inference_steps=2, guidance_scale=1.0, generator=generator(), output_type="np",
        ).frames[0]  # fmt: skip

    pipe = WanPipeline.from_pretrained(tiny["video"], dtype=torch.float32)
    base = render(pipe)
    assert base.shape == (1, 64, 64, 3) and base.dtype == np.float32
    assert 0.0 <= base.min() and base.max() <= 1.0
    clip = render(pipe, num_frames=5)
    assert clip.shape == (5, 64, 64, 3)

    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:  # B starts at zero: the adapter is a no-op until it changes
                param.normal_(std=0.5)
    with_lora = render(pipe)
    assert not np.allclose(with_lora, base)
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))

    fresh = WanPipeline.from_pretrained(tiny["video"], dtype=torch.float32)
    assert np.array_equal(render(fresh), base)
    fresh.load_lora_weights(tmp_path)
    np.testing.assert_allclose(render(fresh), with_lora, atol=1e-6)

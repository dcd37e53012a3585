"""USO on diffusers' FLUX.1: the tiny files follow the published layouts, the DiT LoRA lands on every layer (and a
LoRA for another model is refused by name), the projector reads its sizes from its file, and `conditioned` gives the
transformer the subject and style tokens at USO's positions, then cleans up after itself."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from diffusers import FluxImg2ImgPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from likeness.models.tiny import build_tiny_models
from likeness.models.tiny.images import LIGHTNING_FILE
from likeness.models.uso import (
    StyleProjector,
    SubjectCondition,
    conditioned,
    encode_subject,
    load_uso_encoders,
    load_uso_lora,
    subject_image,
    subject_size,
)

# The published files' keys, `i` standing for a block index.
LORA_KEYS = [
    r"double_blocks\.i\.processor\.qkv_lora1\.(down|up)\.weight",
    r"double_blocks\.i\.processor\.proj_lora1\.(down|up)\.weight",
    r"double_blocks\.i\.processor\.qkv_lora2\.(down|up)\.weight",
    r"double_blocks\.i\.processor\.proj_lora2\.(down|up)\.weight",
    r"single_blocks\.i\.processor\.qkv_lora\.(down|up)\.weight",
    r"single_blocks\.i\.processor\.proj_lora\.(down|up)\.weight",
]
PROJECTOR_KEYS = [
    rf"feature_embedder\.{level}_{name}\.(weight|bias)"
    for level in ("high", "mid", "low")
    for name in (r"embedding_linear\.0", "layer_norm", "projection")
]
HIDDEN, MLP_HIDDEN, RANK = 32, 128, 4  # the tiny refiner's transformer, the tiny LoRA's rank
TARGET_ROWS, TARGET_COLS = 3, 4  # a 64 x 48 target


@pytest.fixture(scope="module")
def tiny(models_dir):
    return build_tiny_models(models_dir / "tiny", roles=["refiner", "uso", "siglip", "editor-lightning"])


@pytest.fixture(scope="module")
def files(tiny):
    folder = tiny["uso"] / "uso_flux_v1.0"
    return {"lora": folder / "dit_lora.safetensors", "projector": folder / "projector.safetensors"}


def load_pipe(tiny):
    pipe = FluxImg2ImgPipeline.from_pretrained(tiny["refiner"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe(tiny, files):
    """The tiny refiner with USO's LoRA fused, as the refine stage uses it (tests must not change it)."""
    pipe = load_pipe(tiny)
    load_uso_lora(pipe, files["lora"])
    return pipe


@pytest.fixture(scope="module")
def encoders(tiny, files):
    return load_uso_encoders(files["projector"], tiny["siglip"], torch.float32, "cpu")


def subject(size=(32, 48)) -> Image.Image:
    return Image.effect_mandelbrot(size, (-2.0, -1.2, 0.8, 1.2), 40).convert("RGB")


def transformer_inputs(batch: int = 1) -> dict:
    generator = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(batch, TARGET_ROWS * TARGET_COLS, 16, generator=generator),
        encoder_hidden_states=torch.randn(batch, 5, 32, generator=generator),
        pooled_projections=torch.randn(batch, 32, generator=generator),
        timestep=torch.full((batch,), 0.7),
        guidance=torch.full((batch,), 4.0),
        img_ids=FluxImg2ImgPipeline._prepare_latent_image_ids(batch, TARGET_ROWS, TARGET_COLS, "cpu", torch.float32),
        txt_ids=torch.zeros(5, 3),
    )


@torch.no_grad()
def run(transformer, return_dict=False, **inputs):
    output = transformer(**(transformer_inputs() | inputs), return_dict=return_dict)
    return output.sample if return_dict else output[0]


def hook_count(transformer) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in transformer.modules())


def test_tiny_uso_files_follow_the_published_layout(files):
    with safe_open(files["lora"], framework="pt") as weights:
        assert weights.metadata() is None or weights.metadata() == {"format": "pt"}
    lora = load_file(files["lora"])
    patterns = [re.compile(p.replace(r"\.i\.", r"\.\d+\.")) for p in LORA_KEYS]
    assert all(any(p.fullmatch(key) for p in patterns) for key in lora)
    assert {re.sub(r"\.\d+\.", ".i.", key) for key in lora} == {
        p.replace("\\", "").replace("(down|up)", kind) for p in LORA_KEYS for kind in ("down", "up")
    }
    assert {tensor.dtype for tensor in lora.values()} == {torch.bfloat16}
    assert lora["double_blocks.0.processor.qkv_lora1.down.weight"].shape == (RANK, HIDDEN)
    assert lora["double_blocks.0.processor.qkv_lora1.up.weight"].shape == (3 * HIDDEN, RANK)
    assert lora["double_blocks.0.processor.proj_lora2.up.weight"].shape == (HIDDEN, RANK)
    # The single blocks' proj LoRA reads the attention output and the MLP's hidden activations side by side.
    assert lora["single_blocks.0.processor.proj_lora.down.weight"].shape == (RANK, HIDDEN + MLP_HIDDEN)

    projector = load_file(files["projector"])
    assert sorted(projector) == sorted(p.replace("\\", "").replace("(weight|bias)", k) for p in PROJECTOR_KEYS
                                       for k in ("weight", "bias"))  # fmt: skip
    assert projector["feature_embedder.mid_embedding_linear.0.weight"].shape == (4, 16)  # 16 SigLIP -> 4 style tokens
    assert projector["feature_embedder.low_projection.weight"].shape == (HIDDEN, 16)


def test_tiny_siglip_is_laid_out_as_the_real_repo(tiny, encoders):
    config = json.loads((tiny["siglip"] / "config.json").read_text())
    assert config["model_type"] == "siglip" and config["vision_config"]["num_hidden_layers"] == 20
    with safe_open(tiny["siglip"] / "model.safetensors", framework="pt") as weights:
        assert {key.split(".")[0] for key in weights.keys()} >= {"vision_model", "text_model"}
    processor_config = json.loads((tiny["siglip"] / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"] == "SiglipImageProcessor"
    pixels = encoders.processor(images=subject(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 28, 28)
    hidden_states = encoders.encoder(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden_states) == 21 and hidden_states[-20].shape == (1, 16, 16)


def test_lora_adapts_every_layer_fuses_and_changes_the_output(tiny, files):
    pipe = load_pipe(tiny)
    before = run(pipe.transformer)
    # Per double block: q, k, v, out of each stream; per single block: q, k, v and proj_out.
    assert load_uso_lora(pipe, files["lora"]) == 8 + 4
    assert not any(isinstance(module, BaseTunerLayer) for module in pipe.transformer.modules())
    after = run(pipe.transformer)
    assert (after - before).norm() > 0.05 * before.norm()


def renamed_keys(files, tmp_path):
    tensors = {key.replace("double_blocks", "joint_blocks"): value for key, value in load_file(files["lora"]).items()}
    save_file(tensors, tmp_path / "renamed.safetensors")
    return tmp_path / "renamed.safetensors"


def wider_model(files, tmp_path):
    """The same keys at twice the width: a USO LoRA for a bigger FLUX."""
    tensors = {key: torch.zeros(2 * v.shape[0], 2 * v.shape[1]) for key, v in load_file(files["lora"]).items()}
    save_file(tensors, tmp_path / "wider.safetensors")
    return tmp_path / "wider.safetensors"


def more_blocks(files, tmp_path):
    """A USO LoRA for a deeper FLUX (FLUX.1 has 19 double blocks, the tiny one 1): most keys find no layer."""
    tensors = load_file(files["lora"])
    tensors |= {
        key.replace("double_blocks.0", "double_blocks.7"): v.clone() for key, v in tensors.items() if "double" in key
    }
    save_file(tensors, tmp_path / "deeper.safetensors")
    return tmp_path / "deeper.safetensors"


@pytest.mark.parametrize("make", [renamed_keys, wider_model, more_blocks, "lightning"])
def test_lora_for_another_model_is_refused_by_name(tiny, files, tmp_path, make):
    path = tiny["editor-lightning"] / LIGHTNING_FILE if make == "lightning" else make(files, tmp_path)
    pipe = load_pipe(tiny)
    before = run(pipe.transformer)
    with pytest.raises(ValueError, match=rf"{re.escape(path.name)}: is it a USO LoRA for FLUX\.1\?"):
        load_uso_lora(pipe, path)
    assert not any(isinstance(module, BaseTunerLayer) for module in pipe.transformer.modules())
    assert torch.equal(run(pipe.transformer), before)


def test_projector_reads_its_sizes_and_refuses_other_files(files):
    projector = StyleProjector.from_file(files["projector"], torch.float32, "cpu")
    assert projector.high_embedding_linear[0].weight.shape == (4, 16)
    assert projector.mid_projection.weight.shape == (HIDDEN, 16)
    hidden_states = [torch.randn(2, 16, 16) for _ in range(21)]
    assert projector(hidden_states).shape == (2, 3 * 4, HIDDEN)
    # The three levels read three different depths.
    moved = list(hidden_states)
    moved[-11] = torch.randn(2, 16, 16)
    changed = (projector(moved) - projector(hidden_states)).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [False] * 4 + [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match=r"dit_lora\.safetensors: .*USO's projector"):
        StyleProjector.from_file(files["lora"], torch.float32, "cpu")


def test_encode_subject_shapes(pipe, encoders):
    condition = encode_subject(pipe, subject((32, 48)), encoders)
    # 32 x 48 px -> 4 x 6 latents of 4 channels -> 2 x 3 patches of 2 x 2 x 4.
    assert condition.tokens.shape == (1, 6, 16) and condition.grid == (3, 2)
    assert condition.style.shape == (1, 12, HIDDEN)
    assert encode_subject(pipe, subject((32, 48)), None).style is None
    with pytest.raises(ValueError, match="multiple of 16"):
        encode_subject(pipe, subject((40, 48)), None)


@pytest.mark.parametrize("return_dict", [False, True])
def test_conditioned_keeps_the_shape_and_changes_the_output(pipe, encoders, return_dict):
    plain = run(pipe.transformer, return_dict)
    subject_only = encode_subject(pipe, subject(), None)
    with conditioned(pipe.transformer, subject_only):
        with_subject = run(pipe.transformer, return_dict)
    with conditioned(pipe.transformer, encode_subject(pipe, subject(), encoders)):
        with_style = run(pipe.transformer, return_dict)
    assert plain.shape == with_subject.shape == with_style.shape == (1, TARGET_ROWS * TARGET_COLS, 16)
    assert (with_subject - plain).norm() > 0.01 * plain.norm()
    assert (with_style - with_subject).norm() > 0.01 * plain.norm()
    assert hook_count(pipe.transformer) == 0


def test_conditioned_repeats_the_condition_over_the_batch(pipe, encoders):
    condition = encode_subject(pipe, subject(), encoders)
    inputs = transformer_inputs()
    batch = {name: inputs[name].repeat(2, *[1] * (inputs[name].ndim - 1)) for name in
             ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")}  # fmt: skip
    with conditioned(pipe.transformer, condition):
        one = run(pipe.transformer)
        two = run(pipe.transformer, **batch)
    assert two.shape == (2, TARGET_ROWS * TARGET_COLS, 16)
    torch.testing.assert_close(two, one.repeat(2, 1, 1))


def uso_d_positions(target_rows, target_cols, rows, cols):
    """USO's pe="d" for one subject, written out: row r, column c at (0, target_rows + r, target_cols + c)."""
    return torch.tensor([[0.0, target_rows + r, target_cols + c] for r in range(rows) for c in range(cols)])


def test_conditioned_passes_uso_positions_and_tokens(pipe, encoders):
    condition = encode_subject(pipe, subject((32, 48)), encoders)
    seen = {}

    def positions(module, args):
        seen["ids"] = args[0].clone()

    def first_block(module, args, kwargs):
        seen["text"], seen["image"] = kwargs["encoder_hidden_states"].clone(), kwargs["hidden_states"].clone()

    block = pipe.transformer.transformer_blocks[0]
    handles = [
        pipe.transformer.pos_embed.register_forward_pre_hook(positions),
        block.register_forward_pre_hook(first_block, with_kwargs=True),
    ]
    try:
        with conditioned(pipe.transformer, condition):
            run(pipe.transformer)
    finally:
        for handle in handles:
            handle.remove()
    style, text, target = 12, 5, TARGET_ROWS * TARGET_COLS
    target_ids = torch.tensor([[0.0, r, c] for r in range(TARGET_ROWS) for c in range(TARGET_COLS)])
    expected = torch.cat([torch.zeros(style + text, 3), target_ids, uso_d_positions(TARGET_ROWS, TARGET_COLS, 3, 2)])
    torch.testing.assert_close(seen["ids"], expected)
    # Style tokens first, after the text embedder; subject tokens after the target's, through the same x_embedder.
    torch.testing.assert_close(seen["text"][:, :style], condition.style)
    torch.testing.assert_close(seen["image"][:, target:], pipe.transformer.x_embedder(condition.tokens))


def test_conditioned_removes_its_hooks_after_an_exception(pipe, encoders):
    condition = encode_subject(pipe, subject(), encoders)
    with pytest.raises(RuntimeError, match="refine failed"):
        with conditioned(pipe.transformer, condition):
            assert hook_count(pipe.transformer) == 3
            raise RuntimeError("refine failed")
    assert hook_count(pipe.transformer) == 0
    # A call that fails inside the transformer leaves nothing behind either.
    with pytest.raises(RuntimeError):
        with conditioned(pipe.transformer, SubjectCondition(torch.zeros(1, 6, 15), (3, 2))):
            run(pipe.transformer)
    assert hook_count(pipe.transformer) == 0


@pytest.mark.parametrize(
    ("size", "long_side", "expected"),
    [((1024, 768), 512, (512, 384)), ((768, 1024), 512, (384, 512)), ((1000, 333), 512, (512, 160)),
     ((500, 500), 512, (512, 512)), ((90, 120), 64, (48, 64))],
)  # fmt: skip
def test_subject_size_follows_uso(size, long_side, expected):
    assert subject_size(*size, long_side) == expected
    assert subject_image(Image.new("RGB", size), long_side).size == expected


def test_subject_size_refuses_a_sliver():
    with pytest.raises(ValueError, match="too narrow"):
        subject_size(1000, 20, 512)


def test_tiny_uso_builds_are_byte_identical(tiny, tmp_path):
    rebuilt = build_tiny_models(tmp_path, roles=["uso", "siglip"])
    for role in ("uso", "siglip"):
        for path in sorted(p for p in tiny[role].rglob("*") if p.is_file()):
            again = rebuilt[role] / path.relative_to(tiny[role])
            assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest(), path

"""lightx2v's Wan 2.2 speed LoRAs: the tiny twins, in the real files' key layout, load into each A14B expert through
diffusers' conversion as the real files do (every tensor, nothing else), change the render and undo at weight 0; the
schedule is lightx2v's own; the header check takes every Wan LoRA layout and refuses, naming why, what is not one."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.utils import logging as diffusers_logging
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from likeness.inputs import InvalidInput
from likeness.models.speed_loras import (
    I2V_A14B_FILES,
    LIGHTX2V_GUIDANCE_SCALE,
    LIGHTX2V_REPO,
    LIGHTX2V_SIGMAS,
    LIGHTX2V_STEPS,
    T2V_A14B_FILES,
    NotAWanLora,
    check_wan_lora_keys,
    lightx2v_scheduler_config,
    write_tiny_speed_lora,
)
from likeness.models.tiny import build_tiny_models
from likeness.models.wan_lora import LORA_TARGETS, lora_metadata, save_wan_lora, to_wan_layout
from tests.test_wan_lora import original_name

RANK = 4
EXPERTS = {"high_noise": ("transformer", "speed"), "low_noise": ("transformer_2", "speed_2")}


@pytest.fixture(scope="module")
def a14b(models_dir: Path) -> Path:
    return build_tiny_models(models_dir / "tiny", roles=["video-a14b"])["video-a14b"]


@pytest.fixture(scope="module")
def speed(a14b: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the twins of both T2V speed LoRAs, as the real repo holds them."""
    folder = tmp_path_factory.mktemp("speed")
    pipe = WanPipeline.from_pretrained(a14b)
    for seed, (expert, (component, _)) in enumerate(EXPERTS.items(), start=1):
        write_tiny_speed_lora(getattr(pipe, component), folder / T2V_A14B_FILES[expert], RANK, seed, scale=1.0)
    return folder


def load_speed(pipe: WanPipeline, folder: Path, experts: tuple[str, ...] = tuple(EXPERTS)) -> None:
    """As production loads them: the high-noise file into `transformer`, the low-noise one into `transformer_2`."""
    for expert in experts:
        component, adapter = EXPERTS[expert]
        pipe.load_lora_weights(
            folder, weight_name=T2V_A14B_FILES[expert], adapter_name=adapter,
            load_into_transformer_2=component == "transformer_2",
        )  # fmt: skip


def render(pipe: WanPipeline) -> torch.Tensor:
    """Latents of a 1-frame, 2-step, 64x64 render with a fixed seed: t = 999 on the high-noise expert, then the low."""
    return pipe(
        "a photo of a woman smiling", height=64, width=64, num_frames=1, num_inference_steps=2,
        guidance_scale=LIGHTX2V_GUIDANCE_SCALE, generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames  # fmt: skip


@contextmanager
def diffusers_messages() -> Iterator[list[str]]:
    """Every message diffusers logs (at any level) and every Python warning raised inside the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger, verbosity = logging.getLogger("diffusers"), diffusers_logging.get_verbosity()
    logger.addHandler(handler)
    diffusers_logging.set_verbosity_debug()
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        logger.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    messages += [record.getMessage() for record in records] + [str(warning.message) for warning in caught]


def adapted_layers(transformer: WanTransformer3DModel, adapter: str) -> dict[str, BaseTunerLayer]:
    return {name: m for name, m in transformer.named_modules() if isinstance(m, BaseTunerLayer) and adapter in m.lora_A}


def test_the_real_files_are_named_as_in_lightx2vs_repo():
    assert LIGHTX2V_REPO == "lightx2v/Wan2.2-Distill-Loras"
    for files, kind, date in ((T2V_A14B_FILES, "t2v", "1217"), (I2V_A14B_FILES, "i2v", "1022")):
        assert files == {
            expert: f"wan2.2_{kind}_A14b_{expert}_lora_rank64_lightx2v_4step_{date}.safetensors"
            for expert in ("high_noise", "low_noise")
        }


def test_the_twins_are_in_the_original_layout_and_load_every_tensor_into_their_expert(a14b, speed):
    for expert in EXPERTS:
        lora = load_file(speed / T2V_A14B_FILES[expert])
        # The real files' layout: original Wan names, kohya's down / up, bfloat16, no alpha (lightx2v applies 1.0).
        assert {re.sub(r"\.\d+\.", ".N.", key, count=1) for key in lora} == {
            f"diffusion_model.blocks.N.{layer}.lora_{matrix}.weight"
            for layer in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                          "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
            for matrix in ("down", "up")
        }  # fmt: skip
        assert len(lora) == 2 * 10 * 2 and {tensor.dtype for tensor in lora.values()} == {torch.bfloat16}
        assert all(lora[key].shape[0] == RANK for key in lora if "lora_down" in key)

    pipe = WanPipeline.from_pretrained(a14b)
    with diffusers_messages() as messages:
        load_speed(pipe, speed)
    # Nothing about keys left over, unexpected, missing or not handled: diffusers took the files whole.
    assert [message for message in messages if re.search(r"key|diff|unexpected|missing|handle", message, re.I)] == []

    for expert, (component, adapter) in EXPERTS.items():
        lora = load_file(speed / T2V_A14B_FILES[expert])
        # diffusers' own renames (its single-file converter) give the layer each pair must have landed in.
        downs = {key.removeprefix("diffusion_model.").replace(".lora_down.", "."): key for key in lora if "down" in key}
        targets = convert_wan_transformer_to_diffusers(downs)
        layers = adapted_layers(getattr(pipe, component), adapter)
        assert layers.keys() == {name.removesuffix(".weight") for name in targets}
        for name, down_key in targets.items():
            layer = layers[name.removesuffix(".weight")]
            assert torch.equal(layer.lora_A[adapter].weight, lora[down_key].float())
            assert torch.equal(layer.lora_B[adapter].weight, lora[down_key.replace("_down.", "_up.")].float())
            assert layer.scaling[adapter] == 1.0
        other = "transformer_2" if component == "transformer" else "transformer"
        assert adapted_layers(getattr(pipe, other), adapter) == {}


def test_the_twins_change_the_render_and_weight_zero_gives_the_base_back(a14b, speed):
    pipe = WanPipeline.from_pretrained(a14b)
    base = render(pipe)
    load_speed(pipe, speed)
    both = render(pipe)
    assert not torch.equal(both, base)
    pipe.set_adapters(["speed", "speed_2"], [1.0, 0.0])
    high_only = render(pipe)
    assert not torch.equal(high_only, base) and not torch.equal(high_only, both)  # each expert's LoRA counts
    pipe.set_adapters(["speed", "speed_2"], [0.0, 0.0])
    assert torch.equal(render(pipe), base)
    pipe.set_adapters(["speed", "speed_2"], [1.0, 1.0])
    assert torch.equal(render(pipe), both)


def test_the_high_noise_file_alone_leaves_transformer_2_untouched(a14b, speed):
    pipe = WanPipeline.from_pretrained(a14b)
    before = {name: tensor.clone() for name, tensor in pipe.transformer_2.state_dict().items()}
    load_speed(pipe, speed, experts=("high_noise",))
    assert len(adapted_layers(pipe.transformer, "speed")) == 2 * 10
    assert not any(isinstance(module, BaseTunerLayer) for module in pipe.transformer_2.modules())
    after = pipe.transformer_2.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def test_the_schedule_is_lightx2vs_4_step_ladder_on_the_right_experts(a14b):
    # lightx2v's Wan22StepDistillScheduler, from its config for these files: sigma 1 - t / 1000 on a 1000-step grid,
    # shifted by sample_shift 5, taken at denoising_step_list; Euler steps; high-noise expert for 2 steps.
    shift, step_list, boundary_step_index = 5.0, [1000, 750, 500, 250], 2
    grid = torch.linspace(1.0, 0.0, 1001)[:-1]
    grid = shift * grid / (1 + (shift - 1) * grid)
    theirs = grid[[1000 - t for t in step_list]]

    scheduler = FlowMatchEulerDiscreteScheduler(**lightx2v_scheduler_config())
    scheduler.set_timesteps(sigmas=list(LIGHTX2V_SIGMAS))
    assert LIGHTX2V_STEPS == len(step_list) and LIGHTX2V_GUIDANCE_SCALE == 1.0
    torch.testing.assert_close(scheduler.sigmas, torch.cat([theirs, torch.zeros(1)]))
    torch.testing.assert_close(scheduler.timesteps, theirs * 1000)
    torch.testing.assert_close(scheduler.timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))

    # The A14B pipeline's boundary (t >= 0.875 * 1000 on `transformer`) splits it where lightx2v switches experts.
    boundary = WanPipeline.load_config(a14b)["boundary_ratio"] * scheduler.config.num_train_timesteps
    assert [bool(t >= boundary) for t in scheduler.timesteps] == [i < boundary_step_index for i in range(4)]

    # Each step is lightx2v's step_post: x - sigma v, plus sigma_next v before the last.
    sample = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for index, timestep in enumerate(scheduler.timesteps):
        velocity = torch.randn(sample.shape, generator=torch.Generator().manual_seed(index + 1))
        stepped = scheduler.step(velocity, timestep, sample).prev_sample
        expected = sample - theirs[index] * velocity
        if index < len(step_list) - 1:
            expected = expected + theirs[index + 1] * velocity
        torch.testing.assert_close(stepped, expected)
        sample = stepped

    # WanPipeline gives set_timesteps only the step count: the same scheduler's own ladder is another one.
    scheduler.set_timesteps(LIGHTX2V_STEPS)
    assert not torch.allclose(scheduler.timesteps, theirs * 1000)


@pytest.fixture(scope="module")
def transformer(a14b: Path) -> WanTransformer3DModel:
    return WanTransformer3DModel.from_pretrained(a14b / "transformer")


def peft_state(a14b: Path, alpha: float) -> dict[str, torch.Tensor]:
    """peft's state of a character LoRA on every target, as our trainer makes one."""
    transformer = WanTransformer3DModel.from_pretrained(a14b / "transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=alpha, target_modules=LORA_TARGETS), "character")
    return get_peft_model_state_dict(transformer, adapter_name="character")


def kohya_layout(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A twin in kohya's (musubi-tuner's) layout, `lora_unet_<layer, _ for .>`, with the alpha diffusers requires."""
    kohya = {}
    for key, tensor in lora.items():
        layer, _, matrix = key.removeprefix("diffusion_model.").partition(".lora_")
        kohya[f"lora_unet_{layer.replace('.', '_')}.lora_{matrix}"] = tensor
        kohya[f"lora_unet_{layer.replace('.', '_')}.alpha"] = torch.tensor(float(RANK))
    return kohya


def extractor_layout(transformer: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """Every family of key lightx2v's extractor writes (as in the I2V high-noise file): LoRAs for the linear layers,
    `.diff` for the other weights, `.diff_b` for biases, `.diff_m` for modulations."""
    lora = {}
    for name, tensor in transformer.state_dict().items():
        layer, _, param = original_name(name).rpartition(".")
        key = f"diffusion_model.{layer}"
        if param == "modulation":
            lora[f"{key}.diff_m"] = torch.zeros_like(tensor)
        elif param == "bias":
            lora[f"{key}.diff_b"] = torch.zeros_like(tensor)
        elif tensor.ndim == 2 and layer != "head.head":
            lora[f"{key}.lora_down.weight"] = torch.zeros(RANK, tensor.shape[1])
            lora[f"{key}.lora_up.weight"] = torch.zeros(tensor.shape[0], RANK)
        else:
            lora[f"{key}.diff"] = torch.zeros_like(tensor)
    return lora


def test_the_check_takes_every_wan_lora_layout_diffusers_loads(a14b, speed, transformer, tmp_path):
    # The twins, for both experts; on a transformer without weights (before any model loads) as on a loaded one.
    with torch.device("meta"):
        bare = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(a14b / "transformer"))
    for file in T2V_A14B_FILES.values():
        for candidate in (transformer, bare):
            check_wan_lora_keys(speed / file, candidate)

    # Our character LoRAs (original layout, lora_A / lora_B, an alpha when alpha != rank) and diffusers' own layout.
    state = peft_state(a14b, alpha=2 * RANK)
    meta = lora_metadata("Ada_Lovelace", "tiny:video-a14b", "wan22_14b", RANK, 2 * RANK, 500, {"steps": 500})
    save_wan_lora(tmp_path / "character.safetensors", to_wan_layout(state, 2 * RANK), meta)
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=state, weight_name="diffusers.safetensors")
    save_file(kohya_layout(load_file(speed / T2V_A14B_FILES["high_noise"])), tmp_path / "kohya.safetensors")
    save_file(extractor_layout(transformer), tmp_path / "extractor.safetensors")
    files = ("character", "diffusers", "kohya", "extractor")
    assert any(".alpha" in key for key in load_file(tmp_path / "character.safetensors"))
    assert all(key.startswith("transformer.blocks.") for key in load_file(tmp_path / "diffusers.safetensors"))

    for name in files:
        pipe = WanPipeline.from_pretrained(a14b)
        check_wan_lora_keys(tmp_path / f"{name}.safetensors", pipe.transformer)
        pipe.load_lora_weights(tmp_path / f"{name}.safetensors", adapter_name=name)
        assert adapted_layers(pipe.transformer, name)
    # A transformer that already holds a LoRA is checked by its own layers, not the adapter's wrappers.
    check_wan_lora_keys(speed / T2V_A14B_FILES["high_noise"], pipe.transformer)


def refusal(path: Path, transformer: WanTransformer3DModel) -> str:
    with pytest.raises(NotAWanLora) as refused:
        check_wan_lora_keys(path, transformer)
    assert isinstance(refused.value, InvalidInput) and str(path) in str(refused.value)
    return str(refused.value)


def test_the_check_refuses_what_is_not_a_wan_lora_for_this_transformer_and_says_why(a14b, speed, transformer, tmp_path):
    # Not safetensors at all: a pickled state dict, text.
    torch.save({"weight": torch.zeros(2)}, tmp_path / "pickle.safetensors")
    (tmp_path / "text.safetensors").write_text("not a LoRA\n")
    for name in ("pickle", "text"):
        assert "is not a safetensors file" in refusal(tmp_path / f"{name}.safetensors", transformer)
    assert refusal(tmp_path / "missing.safetensors", transformer).endswith("missing.safetensors does not exist")

    # Safetensors, but not a LoRA: the model's own weights.
    message = refusal(a14b / "transformer" / "diffusion_pytorch_model.safetensors", transformer)
    assert re.search(
        r"holds no LoRA weights: none of its \d+ tensors is a lora_A, lora_B, lora_down or lora_up", message
    )
    assert "blocks.0.attn1.norm_k.weight" in message

    # A LoRA for another architecture: Stable Diffusion's U-Net and text encoder.
    sd = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 4),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
    }
    save_file(sd, tmp_path / "sd.safetensors")
    message = refusal(tmp_path / "sd.safetensors", transformer)
    assert "is not a LoRA for this Wan transformer: 3 of its 3 tensors name no layer of it" in message
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in message

    # Wan LoRAs for another size: a wider model (as a 5B file is for a 14B one), and one with a block more.
    config = WanTransformer3DModel.load_config(a14b / "transformer")
    for name, change in (("wider", {"attention_head_dim": 16}), ("deeper", {"num_layers": 3})):
        with torch.device("meta"):
            other = WanTransformer3DModel.from_config({**config, **change})
        write_tiny_speed_lora(other, tmp_path / f"{name}.safetensors", RANK, seed=1, scale=1.0)
    message = refusal(tmp_path / "wider.safetensors", transformer)
    assert "does not fit this Wan transformer (a LoRA for another model size?): 20 of its 20 layers do not" in message
    assert "blocks.0.cross_attn.k: lora_up [32, 4] x lora_down [4, 32] for a weight of [24, 24]" in message
    message = refusal(tmp_path / "deeper.safetensors", transformer)
    assert "20 of its 60 tensors name no layer of it, e.g. diffusion_model.blocks.2.cross_attn.k.lora_down" in message

    # Half a pair, and a diff of the wrong shape.
    lora = load_file(speed / T2V_A14B_FILES["high_noise"])
    del lora["diffusion_model.blocks.1.ffn.2.lora_up.weight"]
    lora["diffusion_model.blocks.0.self_attn.norm_q.diff"] = torch.zeros(12)
    save_file(lora, tmp_path / "broken.safetensors")
    message = refusal(tmp_path / "broken.safetensors", transformer)
    assert "2 of its 21 layers do not" in message
    assert (
        "blocks.0.self_attn.norm_q: a diff of [12] for one of [24]; blocks.1.ffn.2 has a lora_down but no lora_up"
        in message
    )

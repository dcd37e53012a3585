"""Character LoRAs in the original Wan key layout: diffusers loads them exactly as it loads its own names, ComfyUI's
key rule maps every tensor, the metadata reads back, a cut-off file is caught, and each A14B expert takes its LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from likeness.models.profiles import load_profile
from likeness.models.tiny import build_tiny_models
from likeness.models.wan_lora import (
    LORA_TARGETS,
    from_wan_layout,
    is_complete_safetensors,
    lora_metadata,
    read_lora_metadata,
    save_wan_lora,
    to_wan_layout,
)

RANK = 4
BLOCKS = 2  # the tiny Wan transformer's


@pytest.fixture(scope="module")
def tiny(models_dir):
    return build_tiny_models(models_dir / "tiny", roles=["video", "video-a14b"])


def random_lora(tiny, seed: int) -> dict:
    """peft's state of a LoRA on every target of the tiny transformer, lora_B nonzero so that it changes outputs."""
    transformer = WanTransformer3DModel.from_pretrained(tiny["video"] / "transformer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        transformer.add_adapter(config, adapter_name="random")
        for name, parameter in transformer.named_parameters():
            if "lora_B" in name:
                parameter.data = torch.randn_like(parameter) * 0.5
    return get_peft_model_state_dict(transformer, adapter_name="random")


@pytest.fixture(scope="module")
def peft_state(tiny):
    return random_lora(tiny, seed=0)


def metadata(alpha: float = RANK, step: int = 500) -> dict[str, str]:
    return lora_metadata("Ada_Lovelace", "tiny:video", "wan22_5b", RANK, alpha, step, {"steps": 6, "rank": RANK})


def render(pipe: WanPipeline) -> torch.Tensor:
    """Latents of a 1-frame, 2-step render with a fixed seed (no CFG: one transformer call a step)."""
    return pipe(
        "a photo of a woman smiling", height=32, width=32, num_frames=1, num_inference_steps=2, guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0), output_type="latent",
    ).frames  # fmt: skip


def render_with(tiny, lora_file) -> torch.Tensor:
    pipe = WanPipeline.from_pretrained(tiny["video"])
    pipe.load_lora_weights(lora_file)
    return render(pipe)


def test_diffusers_loads_the_wan_layout_as_it_loads_its_own_names(tiny, peft_state, tmp_path):
    base = render(WanPipeline.from_pretrained(tiny["video"]))
    outputs = {}
    for alpha in (RANK, 2 * RANK, 0.75 * RANK):
        # diffusers' own names, with peft's config (its lora_alpha) in the header, as diffusers' trainers save them.
        config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=LORA_TARGETS).to_dict()
        own = f"diffusers-{alpha}.safetensors"
        WanPipeline.save_lora_weights(
            tmp_path, transformer_lora_layers=peft_state, weight_name=own, transformer_lora_adapter_metadata=config
        )
        # The Wan layout, with the metadata LoRA managers read: diffusers loads it regardless.
        wan = tmp_path / f"wan-{alpha}.safetensors"
        save_wan_lora(wan, to_wan_layout(peft_state, alpha), metadata(alpha))
        expected, got = render_with(tiny, tmp_path / own), render_with(tiny, wan)
        if alpha / RANK in (1, 2):
            # diffusers folds alpha / rank into the pair on load; a power of two scales exactly as peft's scaling does.
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got, base)
        outputs[alpha] = got
    assert not torch.equal(outputs[RANK], outputs[2 * RANK]) and not torch.equal(outputs[RANK], outputs[0.75 * RANK])


# diffusers -> original Wan names for the whole transformer, independent of wan_lora's table; diffusers' own
# original -> diffusers converter checks it below.
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."),  # the cross-attention norm: norm2 in diffusers, norm3 in Wan
    (".scale_shift_table", ".modulation"),
    ("proj_out.", "head.head."),
)


def original_name(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    for diffusers, wan in _TO_ORIGINAL:
        key = key.replace(diffusers, wan)
    return key


def comfy_loaded(model: dict[str, torch.Tensor], lora: dict[str, torch.Tensor]) -> set[str]:
    """The LoRA keys ComfyUI applies to `model` (original Wan names); it warns "lora key not loaded" for the rest.

    ComfyUI's rule (comfyanonymous/ComfyUI comfy/lora.py at 41444b52, `model_lora_keys_unet`, its "generic lora
    format"): the LoRA name of each weight `diffusion_model.X.weight` is `diffusion_model.X`; `load_lora` then takes
    `<name>.lora_B.weight` with `<name>.lora_A.weight`, and `<name>.alpha`, and patches the weight with their product.
    Its Wan model (comfy/ldm/wan/model.py) names the layers as the original: `blocks.N.self_attn.q`, `ffn.0`, ...
    """
    loaded = set()
    for key, weight in model.items():
        name = f"diffusion_model.{key.removesuffix('.weight')}"
        up, down, alpha = f"{name}.lora_B.weight", f"{name}.lora_A.weight", f"{name}.alpha"
        if key.endswith(".weight") and up in lora and down in lora:
            assert (lora[up] @ lora[down]).shape == weight.shape, name
            loaded |= {up, down} | ({alpha} & lora.keys())
    return loaded


def test_every_tensor_names_an_original_wan_weight_as_comfyui_maps_them(tiny, peft_state, tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    diffusers_model = WanTransformer3DModel.from_pretrained(tiny["video"] / "transformer").state_dict()
    original_model = {original_name(key): weight for key, weight in diffusers_model.items()}
    assert convert_wan_transformer_to_diffusers(dict(original_model)).keys() == diffusers_model.keys()

    save_wan_lora(tmp_path / "wan.safetensors", to_wan_layout(peft_state, 2 * RANK), metadata(2 * RANK))
    lora = load_file(tmp_path / "wan.safetensors")
    assert all(key.startswith("diffusion_model.") for key in lora)
    assert not [key for key in lora if any(name in key for name in ("attn1", "attn2", ".to_", "ffn.net"))]
    # Ten layers a block, a lora_A, a lora_B and (alpha != rank) an alpha each: every one applied.
    assert comfy_loaded(original_model, lora) == lora.keys() and len(lora) == BLOCKS * 10 * 3

    # diffusers' own names, today's file: ComfyUI applies none of it.
    WanPipeline.save_lora_weights(tmp_path, transformer_lora_layers=peft_state, weight_name="own.safetensors")
    assert comfy_loaded(original_model, load_file(tmp_path / "own.safetensors")) == set()


def test_from_wan_layout_inverts_to_wan_layout_and_resumes_peft(tiny, peft_state, tmp_path):
    for alpha in (RANK, 0.5 * RANK):
        back = from_wan_layout(to_wan_layout(peft_state, alpha))
        assert back.keys() == peft_state.keys()
        assert all(torch.equal(back[key], tensor) for key, tensor in peft_state.items())
    assert not any(key.endswith(".alpha") for key in to_wan_layout(peft_state, RANK))

    # Resume from the file: peft takes the weights back into a fresh adapter unchanged.
    save_wan_lora(tmp_path / "wan.safetensors", to_wan_layout(peft_state, 0.5 * RANK), metadata(0.5 * RANK))
    transformer = WanTransformer3DModel.from_pretrained(tiny["video"] / "transformer")
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=0.5 * RANK, target_modules=LORA_TARGETS), adapter_name="a")
    set_peft_model_state_dict(transformer, from_wan_layout(load_file(tmp_path / "wan.safetensors")), adapter_name="a")
    resumed = get_peft_model_state_dict(transformer, adapter_name="a")
    assert all(torch.equal(resumed[key], tensor) for key, tensor in peft_state.items())

    for key in ("blocks.0.norm2.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_A.weight"):
        with pytest.raises(ValueError, match="not a LoRA weight"):
            to_wan_layout({key: torch.zeros(RANK, 24)}, RANK)
    with pytest.raises(ValueError, match="not a LoRA key"):
        from_wan_layout({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.zeros(RANK, 24)})


def test_the_metadata_reads_back_without_torch(peft_state, tmp_path):
    path = tmp_path / "Ada_Lovelace_000000500.safetensors"
    settings = {"learning_rate": 0.0001, "steps": 2000, "buckets": [512, 256]}
    captions = ["Ada_Lovelace, smiling, upper body", "Ada_Lovelace, full body, smiling", "Ada_Lovelace, profile"]
    meta = lora_metadata(
        "Ada_Lovelace", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", "wan22_14b", RANK, 8, 500, settings, captions, "high_noise"
    )
    save_wan_lora(path, to_wan_layout(peft_state, 8), meta)
    assert os.listdir(tmp_path) == [path.name]  # the temp file was renamed, nothing left beside it

    # As a pod agent without torch reads it.
    script = (
        "import json, sys; sys.modules.update(torch=None, safetensors=None, numpy=None); "
        "from likeness.models.wan_lora import is_complete_safetensors, read_lora_metadata; "
        "print(json.dumps([read_lora_metadata(sys.argv[1]), is_complete_safetensors(sys.argv[1])]))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    read, complete = json.loads(done.stdout)
    assert complete and read == {"format": "pt", **meta} == read_lora_metadata(path)
    # Each A14B expert's file has a name of its own, so that a LoRA manager lists the two apart.
    assert read["modelspec.trigger_phrase"] == "Ada_Lovelace"
    assert read["ss_output_name"] == read["modelspec.title"] == "Ada_Lovelace_high_noise"
    assert (read["ss_network_module"], read["ss_num_train_images"]) == ("networks.lora", "3")
    assert (read["ss_network_dim"], read["ss_network_alpha"], read["ss_steps"]) == ("4", "8.0", "500")
    assert read["ss_sd_model_name"] == "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    assert (read["ss_base_model_version"], read["modelspec.architecture"]) == ("wan_2.2_14b", "wan2.2-t2v-a14b/lora")
    assert json.loads(read["training_info"]) == {"step": 500}
    assert json.loads(read["likeness.settings"]) == settings
    # Every caption tag, counted once a caption, as kohya's trainer and AI Toolkit count them.
    tags = {"Ada_Lovelace": 3, "smiling": 2, "full body": 1, "profile": 1, "upper body": 1}
    assert json.loads(read["ss_tag_frequency"]) == {"1_Ada_Lovelace": tags}

    with pytest.raises(ValueError, match="unknown Wan architecture"):
        lora_metadata("Ada", "x", "wan23", RANK, RANK, 0, {})
    with pytest.raises(TypeError, match="str to str"):
        save_wan_lora(path, {}, {"ss_steps": 500})
    with pytest.raises(ValueError, match="lora_adapter_metadata"):
        save_wan_lora(path, {}, {"lora_adapter_metadata": "{}"})
    # A write that fails leaves the previous file as it was, and no temp file.
    before = path.read_bytes()
    with pytest.raises(AttributeError):
        save_wan_lora(path, {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": "not a tensor"}, meta)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]
    # No date nor any other per-run value: the same checkpoint is the same bytes, as the content cache needs.
    save_wan_lora(tmp_path / "again.safetensors", to_wan_layout(peft_state, 8), meta)
    assert (tmp_path / "again.safetensors").read_bytes() == before


def test_a_cut_off_or_foreign_file_is_not_complete(peft_state, tmp_path):
    path = tmp_path / "whole.safetensors"
    save_wan_lora(path, to_wan_layout(peft_state, RANK), metadata())
    assert is_complete_safetensors(path)
    data = path.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")

    def complete(content: bytes) -> bool:
        (tmp_path / "other.safetensors").write_bytes(content)
        return is_complete_safetensors(tmp_path / "other.safetensors")

    # Cut inside the length, inside the header, right after it, inside a tensor, one byte short; and one byte long.
    for size in (0, 5, 8, header // 2, header, header + 1, (header + len(data)) // 2, len(data) - 1):
        assert not complete(data[:size]), size
    assert not complete(data + b"\0")
    assert not complete(bytes(range(256)) * 8)  # garbage
    assert not complete((1000).to_bytes(8, "little") + b"{}")  # a header longer than the file
    assert not complete((2).to_bytes(8, "little") + b"[]")  # JSON, not an object
    # A tensor whose bytes do not match its shape and dtype, though the offsets tile the file.
    entry = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}
    body = json.dumps(entry).encode()
    assert not complete(len(body).to_bytes(8, "little") + body + b"\0" * 4)
    entry["w"]["shape"] = [1]
    assert complete(len(body).to_bytes(8, "little") + json.dumps(entry).encode() + b"\0" * 4)


def test_each_a14b_expert_takes_its_own_lora(tiny, peft_state, tmp_path):
    pipe = WanPipeline.from_pretrained(tiny["video-a14b"])
    assert isinstance(pipe.transformer_2, WanTransformer3DModel) and pipe.config.boundary_ratio == 0.875
    # Saved and loaded back, the twin renders the same; 2 steps run each expert once (t = 999, then 750 < 875).
    calls = []
    for index, expert in enumerate((pipe.transformer, pipe.transformer_2)):
        expert.register_forward_pre_hook(lambda module, args, index=index: calls.append(index))
    assert torch.equal(render(pipe), render(WanPipeline.from_pretrained(tiny["video-a14b"])))
    assert calls == [0, 1]

    save_wan_lora(tmp_path / "high_noise.safetensors", to_wan_layout(peft_state, RANK), metadata())
    save_wan_lora(tmp_path / "low_noise.safetensors", to_wan_layout(random_lora(tiny, seed=1), RANK), metadata())
    noise = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(2))

    @torch.no_grad()
    def outputs() -> list[torch.Tensor]:
        return [
            expert(hidden_states=noise, timestep=torch.tensor([500]), encoder_hidden_states=text, return_dict=False)[0]
            for expert in (pipe.transformer, pipe.transformer_2)
        ]

    base_high, base_low = outputs()
    pipe.load_lora_weights(tmp_path / "high_noise.safetensors", adapter_name="high_noise")
    high, low = outputs()
    assert not torch.equal(high, base_high) and torch.equal(low, base_low)
    pipe.load_lora_weights(tmp_path / "low_noise.safetensors", adapter_name="low_noise", load_into_transformer_2=True)
    high_after, low = outputs()
    assert torch.equal(high_after, high) and not torch.equal(low, base_low)
    assert (set(pipe.transformer.peft_config), set(pipe.transformer_2.peft_config)) == ({"high_noise"}, {"low_noise"})


def test_the_tiny_a14b_profile_is_tiny_with_two_experts():
    tiny, a14b = load_profile("tiny"), load_profile("tiny-a14b")
    assert a14b.name == "tiny-a14b" and a14b.models["video"].source == "tiny:video-a14b"
    assert {role: spec for role, spec in a14b.models.items() if role not in ("video", "animator")} == {
        role: spec for role, spec in tiny.models.items() if role != "video"
    }
    assert a14b.train.base == "wan22_14b" and a14b.train.trained_experts == ("high_noise", "low_noise")
    # It renders as production does: the 4 steps of the speed LoRAs, without CFG.
    assert a14b.render == tiny.render.model_copy(update={"steps": 4, "guidance_scale": 1.0})
    assert a14b.limits.render.steps.hard.max == 4
    assert a14b.limits.model_copy(update={"render": tiny.limits.render}) == tiny.limits

"""The "tiny" model profile: every model role with its real architecture, a tiny config and
random weights, built offline and saved as a local repo folder.

Production code loads these folders with the same `from_pretrained` / spandrel calls it uses for
the real hub repos, so flows, tests and benchmarks run the real code paths on a CPU in seconds.
Builds are deterministic: every component is created right after a fixed `torch.manual_seed`,
tokenizers are built from a fixed word list, so two builds write byte-identical weight files.

Real counterparts: editor = Qwen/Qwen-Image-Edit-2511, editor-lightning = its 4-step Lightning LoRA
(lightx2v/Qwen-Image-Edit-2511-Lightning), refiner = FLUX.1 (img2img),
upscaler = ESRGAN 4x (RRDBNet), captioner = Qwen/Qwen3-VL-8B-Instruct,
video = Wan 2.x text-to-video (diffusers layout), video-a14b = Wan-AI/Wan2.2-T2V-A14B-Diffusers (two experts:
`transformer` for high noise, `transformer_2` for low noise, split at boundary_ratio 0.875),
video-a14b-lightx2v = lightx2v/Wan2.2-Distill-Loras' T2V A14B 4-step LoRAs (high and low noise),
animator = Wan-AI/Wan2.2-I2V-A14B-Diffusers, animator-lightx2v = its I2V A14B 4-step LoRAs,
prompter = a chat LM laid out as Qwen/Qwen3-4B-Instruct-2507.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

TINY_ROLES = (
    "editor", "editor-lightning", "refiner", "refiner-klein", "upscaler", "captioner", "video", "video-a14b",
    "video-a14b-lightx2v", "animator", "animator-lightx2v", "prompter",
)  # fmt: skip

_MARKER = ".complete"

# Common English words: the vocabulary of every tiny tokenizer, so that random weights still
# decode to word strings (captions) and prompts tokenize into real tokens rather than bytes.
_WORDS = """
a an the of in on at with and or to from by for is are was be this that it its his her their
photo picture image portrait close up shot of person man woman boy girl child face hair eyes
nose mouth smile smiling looking standing sitting walking running holding wearing red green
blue yellow black white brown gray pink orange purple dark light bright soft warm cold sunny
park street city beach forest mountain room kitchen office studio garden road sky water tree
trees grass flower flowers house building car dog cat bird table chair window door wall floor
shirt dress jacket hat glasses coat suit background front side left right top bottom young old
happy calm serious camera lens film cinematic dramatic lighting natural daylight night evening
morning sunset golden hour high quality detailed sharp blurry style realistic painting drawing
""".split()


def build_tiny_models(root: Path, roles: Iterable[str] = TINY_ROLES) -> dict[str, Path]:
    """Build (once) the tiny model repos under root/<role>; returns role -> folder. Idempotent:
    a role whose folder is complete (marker file written last, e.g. root/<role>/.complete) is not rebuilt.
    Writes into a temp folder beside it then renames, so a crash never leaves a half-built repo."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = {}
    for role in roles:
        if role not in _BUILDERS:
            raise ValueError(f"unknown tiny role {role!r}; expected one of {TINY_ROLES}")
        folder = root / role
        if not (folder / _MARKER).exists():
            _build_atomically(folder, _BUILDERS[role])
        folders[role] = folder
    return folders


def _build_atomically(folder: Path, build: Callable[[Path], None]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        (staging / _MARKER).write_text("built by likeness.models.tiny\n")
        staging.chmod(0o755)  # mkdtemp makes it private; the repo folder should read like any other
        if folder.exists():
            # Only an incomplete folder can be here (a complete one is never rebuilt).
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process finished the same role first; its folder is as good as ours.
            if not (folder / _MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _seeded(seed: int, make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    # eval(): dropout (UMT5) would otherwise make outputs differ between calls.
    return make().eval()


# Tokenizers, built in memory ------------------------------------------------------------------


def _byte_level_bpe(special_tokens: list[str]):
    """A byte-level BPE (Qwen2 style) trained on the word list: (vocab, merges)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([" ".join(_WORDS)], trainer)
    model = json.loads(tokenizer.to_str())["model"]
    # transformers takes merges as tuples; the JSON form gives lists.
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def _t5_tokenizer():
    """A T5 (Unigram, sentencepiece-style) tokenizer over the word list, as used by Flux and Wan."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{word}", -1.0) for word in dict.fromkeys(_WORDS)]
    pieces += [(char, -5.0) for char in sorted(set("".join(_WORDS)))]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _qwen3_tokenizer():
    """Qwen3's tokenizer layout over the word list, with its chat template (FLUX.2 klein, the prompter)."""
    from transformers import Qwen2Tokenizer

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab, merges = _byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    tokenizer.chat_template = _QWEN3_CHAT_TEMPLATE
    return tokenizer


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _byte_level_bpe(["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# Roles ------------------------------------------------------------------------------------------


# Qwen-Image's transformer layout at toy width, with Qwen-Image-Edit-2511's `zero_cond_t`: the condition images'
# tokens are modulated at timestep 0 rather than at the denoising step.
_EDITOR_TRANSFORMER = dict(
    patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
    joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4), zero_cond_t=True,
)  # fmt: skip

# The layers of every transformer block that lightx2v's Qwen-Image(-Edit) Lightning LoRAs adapt.
LIGHTNING_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
    "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip
LIGHTNING_FILE = "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors"


def _qwen_tokenizer() -> Any:
    """A Qwen2 tokenizer: a byte-level BPE trained in memory, with the special tokens Qwen's VL models use."""
    from transformers import Qwen2Tokenizer

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    vocab, merges = _byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
    return tokenizer


def _build_editor(folder: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from likeness.models.qwen_edit import ImageOnlyQwen2VLProcessor, QwenEditPlusPipeline

    tokenizer = _qwen_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    text_encoder_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, rope_theta=1e6,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            bos_token_id=None, eos_token_id=token_id("<|im_end|>"), pad_token_id=token_id("<|endoftext|>"),
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[1]),
        vocab_size=len(tokenizer),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
    )  # fmt: skip
    # The VL encoder sees at most 2x2 merged patches of 28 px: a handful of image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    pipe = QwenEditPlusPipeline(
        # Qwen-Image's own scheduler config; the Lightning LoRA's authors replace part of it.
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift_terminal=0.02, use_dynamic_shifting=True,
        ),
        vae=_seeded(1, lambda: AutoencoderKLQwenImage(
            base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        )),
        text_encoder=_seeded(2, lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config)),
        tokenizer=tokenizer,
        processor=ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None),
        transformer=_seeded(3, lambda: QwenImageTransformer2DModel(**_EDITOR_TRANSFORMER)),
        vae_image_area=64 * 64,
        vl_image_area=56 * 56,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    # Declare the classes the real repo declares, so the folder reads like Qwen-Image-Edit-2511.
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _build_editor_lightning(folder: Path) -> None:
    """The 4-step Lightning LoRA's twin for the tiny editor: the real file's name, key layout and alpha / rank."""
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import save_file

    # The real file holds, for each of the 60 blocks and each target layer, kohya-style `lora_down` and `lora_up`
    # weights of rank 64 and a scalar `alpha` of 8, all bfloat16, no prefix and no metadata (that layout alone
    # gives its exact size, 849,608,296 bytes); diffusers converts it on load. Here: rank 8, alpha 1.
    rank, alpha = 8, 1.0
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**_EDITOR_TRANSFORMER)  # for the layers' shapes only
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for block in range(len(transformer.transformer_blocks)):
        for target in LIGHTNING_TARGETS:
            name = f"transformer_blocks.{block}.{target}"
            layer = transformer.get_submodule(name)
            down = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
            tensors[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
            # Strong enough to move the tiny editor's output about as much as a change of seed does.
            up = torch.randn(layer.out_features, rank, generator=generator) * 8
            tensors[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
            tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.bfloat16)
    save_file(tensors, folder / LIGHTNING_FILE)


def _build_refiner(folder: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = _clip_tokenizer()
    tokenizer_2 = _t5_tokenizer()
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    t5_config = T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
    )  # fmt: skip
    pipe = FluxImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096
        ),
        # Four blocks: the real 8x spatial downsampling, so Flux's size rules are the real ones.
        vae=_seeded(1, lambda: AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=128,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        )),
        text_encoder=_seeded(2, lambda: CLIPTextModel(clip_config)),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(3, lambda: T5EncoderModel(t5_config)),
        tokenizer_2=tokenizer_2,
        transformer=_seeded(4, lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=True,
        )),
    )  # fmt: skip
    pipe.save_pretrained(folder)


# Qwen3's chat template for one user message, with the empty thinking block FLUX.2 klein's prompt asks for.
_QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


def _build_refiner_klein(folder: Path) -> None:
    """FLUX.2 klein 4B's layout (black-forest-labs/FLUX.2-klein-4B): Qwen3 text encoder, FLUX.2 VAE and transformer."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _qwen3_tokenizer()
    # 28 layers: the pipeline reads hidden states 9, 18 and 27 (stacked, so the transformer sees 3 x 16 wide).
    text_config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )  # fmt: skip
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"),
        # Four blocks: the real 8x spatial downsampling, so the size rules are the real ones.
        vae=_seeded(1, lambda: AutoencoderKLFlux2(
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
            sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
        )),
        text_encoder=_seeded(2, lambda: Qwen3ForCausalLM(text_config)),
        tokenizer=tokenizer,
        transformer=_seeded(3, lambda: Flux2Transformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
            guidance_embeds=False,
        )),
        is_distilled=True,
    )  # fmt: skip
    pipe.save_pretrained(folder)


def _build_upscaler(folder: Path) -> None:
    from safetensors.torch import save_file

    from likeness.models.spandrel_compat import import_spandrel

    import_spandrel()  # spandrel's architecture modules need its torchvision workaround
    from spandrel.architectures.ESRGAN import ESRGAN

    model = _seeded(1, lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, folder / "model.safetensors")
    config = {"architecture": "ESRGAN (RRDBNet)", "scale": 4, "num_filters": 8, "num_blocks": 1,
              "loader": "spandrel.ModelLoader().load_from_file('model.safetensors')"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# Qwen3-VL's chat template, for the messages a captioner gets (no tools): the same text the real one makes.
_QWEN_VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _build_captioner(folder: Path) -> None:
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _qwen_tokenizer()
    tokenizer.chat_template = _QWEN_VL_CHAT_TEMPLATE
    token_id = tokenizer.convert_tokens_to_ids
    end_of_text, end_of_turn = token_id("<|endoftext|>"), token_id("<|im_end|>")
    # Qwen3-VL-8B's layout at toy width: grouped KV heads, interleaved M-RoPE (its sections sum to head_dim / 2),
    # 16 px patches merged 2x2, one DeepStack layer, untied output embedding.
    config = Qwen3VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                             "mrope_interleaved": True},
            bos_token_id=end_of_text, eos_token_id=end_of_turn, pad_token_id=end_of_text,
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )  # fmt: skip
    # Seed 7: with seeds 1 and 3 these random weights end every answer within a few tokens, leaving tiny
    # captions no description to cut to length.
    model = _seeded(7, lambda: Qwen3VLForConditionalGeneration(config))
    # The real repos sample by default; the captioner must override this to decode greedily.
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[end_of_turn, end_of_text], pad_token_id=end_of_text,
        do_sample=True, temperature=0.7, top_k=20, top_p=0.8,
    )  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The real preprocessor settings except the area: images become at most 64x64 px, 2x2 merged patches.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    image_processor.save_pretrained(folder)


def _build_video(folder: Path) -> None:
    _tiny_wan().save_pretrained(folder)


# As in Wan2.2-T2V-A14B-Diffusers: `transformer` denoises timesteps >= 875 of 1000, `transformer_2` the rest.
A14B_BOUNDARY_RATIO = 0.875
# Wan 2.2 I2V-A14B splits its experts later (its diffusers model_index.json).
I2V_BOUNDARY_RATIO = 0.9


def _build_video_a14b(folder: Path) -> None:
    """The A14B's layout: the tiny video pipeline with a second expert of the same config and its own weights."""
    _tiny_wan(two_experts=True).save_pretrained(folder)


def _tiny_wan(two_experts: bool = False, image_to_video: bool = False) -> Any:
    """A tiny WanPipeline: Wan 2.1's VAE (z_dim 16, as the 14B models use), UMT5, one transformer or two experts;
    with `image_to_video` a WanImageToVideoPipeline as Wan 2.2 I2V-A14B's (36 input channels, boundary 0.9)."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip

    def transformer() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=36 if image_to_video else 16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )  # fmt: skip

    pipeline = WanImageToVideoPipeline if image_to_video else WanPipeline
    return pipeline(
        # As in the Wan-AI diffusers repos (flow_shift 3.0 for 480p, 5.0 for 720p).
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
        ),
        vae=_seeded(1, lambda: AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        )),
        text_encoder=_seeded(2, lambda: UMT5EncoderModel(text_config)),
        tokenizer=tokenizer,
        transformer=_seeded(3, transformer),
        transformer_2=_seeded(4, transformer) if two_experts else None,
        boundary_ratio=(I2V_BOUNDARY_RATIO if image_to_video else A14B_BOUNDARY_RATIO) if two_experts else None,
    )  # fmt: skip


def _build_prompter(folder: Path) -> None:
    """A chat LM as Qwen/Qwen3-4B-Instruct-2507 is laid out: Qwen3 with Qwen's tokenizer and chat template."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = _qwen3_tokenizer()
    end, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=end, pad_token_id=pad,
    )  # fmt: skip
    model = _seeded(6, lambda: Qwen3ForCausalLM(config))
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=pad)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _build_animator(folder: Path) -> None:
    """Wan 2.2 I2V-A14B's layout: two experts whose input is the noise, the still's latents and a frame mask
    (16 + 16 + 4 channels), split at boundary ratio 0.9, no image encoder."""
    _tiny_wan(two_experts=True, image_to_video=True).save_pretrained(folder)


def _build_animator_lightx2v(folder: Path) -> None:
    """lightx2v's I2V A14B 4-step LoRAs' twins: the real files' names and key layout, one per expert."""
    from likeness.models.speed_loras import I2V_A14B_FILES, write_tiny_speed_lora

    pipe = _tiny_wan(two_experts=True, image_to_video=True)
    for seed, (expert, transformer) in enumerate((("high_noise", pipe.transformer), ("low_noise", pipe.transformer_2))):
        write_tiny_speed_lora(transformer, folder / I2V_A14B_FILES[expert], rank=4, seed=31 + seed, scale=1.0)


def _build_video_a14b_lightx2v(folder: Path) -> None:
    """The lightx2v 4-step LoRAs' twins for the tiny A14B: the real files' names and key layout, one per expert."""
    from likeness.models.speed_loras import T2V_A14B_FILES, write_tiny_speed_lora

    pipe = _tiny_wan(two_experts=True)
    for seed, (expert, transformer) in enumerate((("high_noise", pipe.transformer), ("low_noise", pipe.transformer_2))):
        write_tiny_speed_lora(transformer, folder / T2V_A14B_FILES[expert], rank=4, seed=21 + seed, scale=1.0)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "editor": _build_editor,
    "editor-lightning": _build_editor_lightning,
    "refiner": _build_refiner,
    "refiner-klein": _build_refiner_klein,
    "upscaler": _build_upscaler,
    "captioner": _build_captioner,
    "video": _build_video,
    "video-a14b": _build_video_a14b,
    "video-a14b-lightx2v": _build_video_a14b_lightx2v,
    "animator": _build_animator,
    "animator-lightx2v": _build_animator_lightx2v,
    "prompter": _build_prompter,
}

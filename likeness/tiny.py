"""The "tiny" model profile: every model role with its real architecture, a tiny config and
random weights, built offline and saved as a local repo folder.

Production code loads these folders with the same `from_pretrained` / spandrel calls it uses for
the real hub repos, so flows, tests and benchmarks run the real code paths on a CPU in seconds.
Builds are deterministic: every component is created right after a fixed `torch.manual_seed`,
tokenizers are built from a fixed word list, so two builds write byte-identical weight files.

Real counterparts: editor = Qwen/Qwen-Image-Edit-2509, refiner = FLUX.1 (img2img),
upscaler = ESRGAN 4x (RRDBNet), captioner = Salesforce/blip-image-captioning-large,
video = Wan 2.x text-to-video (diffusers layout).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

TINY_ROLES = ("editor", "refiner", "upscaler", "captioner", "video")

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
        (staging / _MARKER).write_text("built by likeness.tiny\n")
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
    # eval(): dropout (UMT5, BLIP) would otherwise make outputs differ between calls.
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


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _byte_level_bpe(["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


# Roles ------------------------------------------------------------------------------------------


def _build_editor(folder: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from likeness.qwen_edit import ImageOnlyQwen2VLProcessor, QwenEditPlusPipeline

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
    vocab, merges = _byte_level_bpe(special)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[1:]})
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
        scheduler=FlowMatchEulerDiscreteScheduler(shift_terminal=0.02, use_dynamic_shifting=True),
        vae=_seeded(1, lambda: AutoencoderKLQwenImage(
            base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        )),
        text_encoder=_seeded(2, lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config)),
        tokenizer=tokenizer,
        processor=ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None),
        transformer=_seeded(3, lambda: QwenImageTransformer2DModel(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
            num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
        )),
        vae_image_area=64 * 64,
        vl_image_area=56 * 56,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    # Declare the classes the real repo declares, so the folder reads like Qwen-Image-Edit-2509.
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


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


def _build_upscaler(folder: Path) -> None:
    from safetensors.torch import save_file

    from likeness.spandrel_compat import import_spandrel

    import_spandrel()  # spandrel's architecture modules need its torchvision workaround
    from spandrel.architectures.ESRGAN import ESRGAN

    model = _seeded(1, lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, folder / "model.safetensors")
    config = {"architecture": "ESRGAN (RRDBNet)", "scale": 4, "num_filters": 8, "num_blocks": 1,
              "loader": "spandrel.ModelLoader().load_from_file('model.safetensors')"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _build_captioner(folder: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: index for index, token in enumerate(specials + list(dict.fromkeys(_WORDS)))}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64,
            # BLIP decodes from [DEC], stops at [SEP]: the ids must point into this vocabulary.
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"), sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
        ),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )  # fmt: skip
    model = _seeded(1, lambda: BlipForConditionalGeneration(config))
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _build_video(folder: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _t5_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    pipe = WanPipeline(
        # As in the Wan-AI diffusers repos (flow_shift 3.0 for 480p, 5.0 for 720p).
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
        ),
        vae=_seeded(1, lambda: AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        )),
        text_encoder=_seeded(2, lambda: UMT5EncoderModel(text_config)),
        tokenizer=tokenizer,
        transformer=_seeded(3, lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )),
    )  # fmt: skip
    pipe.save_pretrained(folder)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "editor": _build_editor,
    "refiner": _build_refiner,
    "upscaler": _build_upscaler,
    "captioner": _build_captioner,
    "video": _build_video,
}

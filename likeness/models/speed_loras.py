"""lightx2v's 4-step distillation LoRAs for Wan 2.2 A14B (the "speed LoRAs"): the real files' names and the
schedule their authors run them with, loading them into a pipeline with that schedule (`speed_loras_on`, for a
render and for our trainer's samples of a checkpoint), tiny twins of them in the same key layout for the `tiny`
profiles, and a check, from the file's header alone, that a LoRA fits a Wan transformer before any model loads.

    from pathlib import Path

    from diffusers import WanPipeline

    from likeness.models.speed_loras import T2V_A14B_FILES, check_wan_lora_keys, write_tiny_speed_lora
    from likeness.models.tiny import build_tiny_models

    pipe = WanPipeline.from_pretrained(build_tiny_models(Path("/tmp/tiny"), roles=["video-a14b"])["video-a14b"])
    folder = Path("/tmp/speed")
    for expert, transformer, seed in (("high_noise", pipe.transformer, 1), ("low_noise", pipe.transformer_2, 2)):
        write_tiny_speed_lora(transformer, folder / T2V_A14B_FILES[expert], rank=4, seed=seed, scale=1.0)
        check_wan_lora_keys(folder / T2V_A14B_FILES[expert], transformer)
    pipe.load_lora_weights(folder, weight_name=T2V_A14B_FILES["high_noise"], adapter_name="speed")
    pipe.load_lora_weights(
        folder, weight_name=T2V_A14B_FILES["low_noise"], adapter_name="speed_2", load_into_transformer_2=True
    )

The real files' key layout (no weights could be downloaded here; this is read from public sources):

- The Wan 2.2 distill LoRAs are not trained LoRAs but SVD extractions of lightx2v's distilled experts minus the base
  model (lightx2v's X-niper in ModelTC/LightX2V-Wan2.2-Lightning issue #31). lightx2v's extractor
  (ModelTC/LightX2V `tools/extract/lora_extractor.py`) writes, for each changed 2-D weight of at least a million
  elements, `diffusion_model.<layer>.lora_down.weight` (rank, in) and `.lora_up.weight` (out, rank), and for every
  other changed tensor `diffusion_model.<layer>.diff` (a weight), `.diff_b` (a bias) or `.diff_m` (a modulation);
  original Wan layer names, bfloat16, no `.alpha` (a scale of 1), no metadata.
- That rule applied to every tensor of Wan 2.2 I2V-A14B gives a header and tensors of exactly 634,645,944 bytes: the
  size of `wan2.2_i2v_A14b_high_noise_..._1022` (its LFS pointer, mirrored by tabspace-ai/hf-models). The low-noise
  one, 739,472,104 bytes (mirrored by Isi99999/Wan2.2BasedModels), is exactly the rule applied to Wan 2.1 I2V-14B
  without modulation diffs: it carries `cross_attn.k_img` / `v_img` and `img_emb` keys Wan 2.2 I2V-A14B has no layer
  for (ModelTC/LightX2V issue #1246), which diffusers skips with an "unexpected keys" warning and
  `check_wan_lora_keys` refuses.
- The T2V files (`..._1217`, the pair Likeness renders with) are 614 MB (their Hugging Face file pages) and 586 MiB
  rounded up (a third-party pin of sha256 89003385... and 4df7c206...). The rank-64 `lora_down` / `lora_up` pairs of
  the ten linear layers of the 40 blocks (`self_attn.{q,k,v,o}`, `cross_attn.{q,k,v,o}`, `ffn.0`, `ffn.2`) alone
  make 613,518,320 bytes, and every other family the extractor writes is too large to fit beside them (bias diffs
  4.8 MB, norm diffs 2.5 MB, modulation diffs 2.5 MB, embedding LoRAs 9 MB). So those pairs are the file, with at
  most 0.95 MB of extras the sizes cannot name (`head.head.diff` and `.diff_b`, 0.66 MB, would fit; diffusers maps
  them to `proj_out`, diffusers PR #12541, written for this repo's I2V files). The twins write the pairs only.
- Loading: `WanLoraLoaderMixin.lora_state_dict` sends `diffusion_model.` keys to
  `_convert_non_diffusers_wan_lora_to_diffusers`, which renames them `transformer.blocks.N.attn1.to_q.lora_A.weight`
  and so on (diffusers 0.42.1 here); `load_into_transformer_2=True` puts the low-noise file into `transformer_2`.

The schedule, from lightx2v's own config for these two files (ModelTC/LightX2V
`configs/distill/wan22/wan_moe_t2v_distill_lora.json`): 4 steps at `denoising_step_list` [1000, 750, 500, 250] with
`sample_shift` 5.0, the high-noise expert for the first `boundary_step_index` = 2 steps, `enable_cfg` false, both
LoRAs at strength 1.0. Their `Wan22StepDistillScheduler` (`lightx2v/models/schedulers/wan/step_distill/scheduler.py`)
takes sigma 1 - t / 1000 at those steps, shifted (5 s / (1 + 4 s)), so timesteps 1000, 937.5, 833.3 and 625, and
steps x + (s_next - s) v down to 0: Euler. In diffusers that is `FlowMatchEulerDiscreteScheduler` with
`lightx2v_scheduler_config()` and `set_timesteps(sigmas=LIGHTX2V_SIGMAS)`; the A14B pipeline's boundary ratio 0.875
puts exactly the first two on `transformer`. `WanPipeline` passes `set_timesteps` only the step count, and the same
scheduler's own 4-step ladder is another one (1000, 909.7, 717.3, 24.4), so the sigmas must be given to it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from likeness.config import Expert, ModelSpec
from likeness.inputs import InvalidInput
from likeness.models.profiles import spec_path
from likeness.models.wan_lora import LORA_TARGETS
from likeness.settings import get_settings

if TYPE_CHECKING:
    import torch

LIGHTX2V_REPO = "lightx2v/Wan2.2-Distill-Loras"
# Expert -> file: `high_noise` goes into `transformer`, `low_noise` into `transformer_2`.
T2V_A14B_FILES = {
    "high_noise": "wan2.2_t2v_A14b_high_noise_lora_rank64_lightx2v_4step_1217.safetensors",
    "low_noise": "wan2.2_t2v_A14b_low_noise_lora_rank64_lightx2v_4step_1217.safetensors",
}
I2V_A14B_FILES = {
    "high_noise": "wan2.2_i2v_A14b_high_noise_lora_rank64_lightx2v_4step_1022.safetensors",
    "low_noise": "wan2.2_i2v_A14b_low_noise_lora_rank64_lightx2v_4step_1022.safetensors",
}

# lightx2v's denoising_step_list [1000, 750, 500, 250] as sigmas before the shift, for `set_timesteps(sigmas=...)`.
LIGHTX2V_SIGMAS = (1.0, 0.75, 0.5, 0.25)
LIGHTX2V_STEPS = len(LIGHTX2V_SIGMAS)
# Distilled without classifier-free guidance: one transformer pass a step.
LIGHTX2V_GUIDANCE_SCALE = 1.0
# The adapter name the speed LoRAs load under, beside the character's (renders, and our trainer's samples).
SPEED_ADAPTER = "likeness_speed"


class NotAWanLora(InvalidInput):
    """A file given as a Wan LoRA that is not one, or not one for this transformer."""


def lightx2v_scheduler_config() -> dict[str, Any]:
    """The `FlowMatchEulerDiscreteScheduler` settings lightx2v's 4-step schedule runs with (with `LIGHTX2V_SIGMAS`)."""
    return {"num_train_timesteps": 1000, "shift": 5.0, "use_dynamic_shifting": False}


def speed_lora_paths(spec: ModelSpec, role: str = "video") -> dict[Expert, Path]:
    """The local file of each of the model's speed LoRAs (none for a model without); ProfileUnavailable for one
    that is not on this machine. `role` names the model in that message."""
    settings = get_settings()
    return {
        expert: spec_path(f"{role} {expert} speed LoRA", lora, settings) for expert, lora in spec.speed_loras.items()
    }


@contextmanager
def speed_loras_on(pipe: Any, spec: ModelSpec, role: str = "video") -> Iterator[list[str]]:
    """The model's step-distillation LoRAs loaded into `pipe` (as adapter `SPEED_ADAPTER`, the low-noise one into
    `transformer_2`) and its scheduler stepping their sigmas with Euler, for one render or one checkpoint's samples;
    both undone after.

    Yields the adapter names to activate beside the character's: none for a model without speed LoRAs. Loading an
    adapter makes it the only active one: the caller sets the adapters it renders with."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if not spec.speed_loras:
        yield []
        return
    for expert, path in speed_lora_paths(spec, role).items():
        pipe.load_lora_weights(
            path.parent,
            weight_name=path.name,
            adapter_name=SPEED_ADAPTER,
            load_into_transformer_2=expert == "low_noise",
        )
    scheduler = pipe.scheduler
    euler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, **lightx2v_scheduler_config())
    # The pipeline asks for a step count only; the LoRAs were distilled on these very sigmas.
    euler.set_timesteps = partial(euler.set_timesteps, sigmas=list(spec.speed_sigmas))
    pipe.scheduler = euler
    try:
        yield [SPEED_ADAPTER]
    finally:
        pipe.scheduler = scheduler
        pipe.delete_adapters(SPEED_ADAPTER)


def write_tiny_speed_lora(transformer: torch.nn.Module, path: Path, rank: int, seed: int, scale: float) -> Path:
    """A speed LoRA for `transformer` in the real files' layout, random from `seed`, `scale` strong; returns `path`."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, layer in transformer.named_modules():
        if not _BLOCK_TARGET.fullmatch(name):
            continue
        key = f"diffusion_model.{_original_name(name)}"
        down = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
        # Nonzero, unlike a fresh LoRA's up matrix, so that the LoRA changes what the model computes.
        up = torch.randn(layer.out_features, rank, generator=generator) * scale / rank**0.5
        tensors[f"{key}.lora_down.weight"] = down.to(torch.bfloat16)
        tensors[f"{key}.lora_up.weight"] = up.to(torch.bfloat16)
    if not tensors:
        raise ValueError(f"{type(transformer).__name__} has no Wan block layer among {LORA_TARGETS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def check_wan_lora_keys(path: Path, transformer: torch.nn.Module) -> None:
    """Refuse (NotAWanLora) a file that is not a LoRA whose every tensor fits a layer of `transformer`.

    Reads the safetensors header only. Takes the original Wan layout (`diffusion_model.blocks.0.self_attn.q.lora_down
    .weight`, `lora_A` / `lora_B`, `.alpha`, lightx2v's `.diff` / `.diff_b` / `.diff_m`), diffusers' own
    (`transformer.blocks.0.attn1.to_q.lora_A.weight`) and kohya's (`lora_unet_blocks_0_self_attn_q.lora_down.weight`).
    The transformer may be on the meta device (`with torch.device("meta"): WanTransformer3DModel.from_config(...)`)."""
    path = Path(path)
    shapes = _header_shapes(path)
    if not any(_LORA_MATRIX.search(key) for key in shapes):
        examples = f", e.g. {_examples(shapes)}" if shapes else ""
        raise NotAWanLora(
            f"{path} holds no LoRA weights: none of its {len(shapes)} tensors is a lora_A, lora_B, lora_down or "
            f"lora_up{examples}"
        )
    params = _original_shapes(transformer)
    kohya = {layer.replace(".", "_"): layer for layer in {param.rpartition(".")[0] for param in params}}
    unmatched, layers = [], defaultdict(dict)
    for key, shape in shapes.items():
        parsed = _layer_and_kind(key, kohya)
        if parsed is None or _param(*parsed) not in params:
            unmatched.append(key)
        else:
            layers[parsed[0]][parsed[1]] = shape
    if unmatched:
        raise NotAWanLora(
            f"{path} is not a LoRA for this Wan transformer: {len(unmatched)} of its {len(shapes)} tensors name no "
            f"layer of it, e.g. {_examples(unmatched)}"
        )
    misfits = [problem for layer, kinds in sorted(layers.items()) if (problem := _misfit(layer, kinds, params))]
    if misfits:
        raise NotAWanLora(
            f"{path} does not fit this Wan transformer (a LoRA for another model size?): {len(misfits)} of its "
            f"{len(layers)} layers do not, e.g. {'; '.join(misfits[:3])}"
        )


_BLOCK_TARGET = re.compile(rf"blocks\.\d+\.({'|'.join(map(re.escape, LORA_TARGETS))})")

# diffusers' WanTransformer3DModel names -> the original Wan names, applied in order to `name + "."`; the inverse of
# the renames in diffusers' `convert_wan_transformer_to_diffusers` (tests check the round trip).
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."),  # the cross-attention norm: norm2 in diffusers, norm3 in Wan
    (".scale_shift_table.", ".modulation."),
    ("proj_out.", "head.head."),
)

# Key suffix -> what the tensor is; the first that matches wins.
_KINDS = (
    (".lora_down.weight", "lora_down"),
    (".lora_A.weight", "lora_down"),
    (".lora_up.weight", "lora_up"),
    (".lora_B.weight", "lora_up"),
    (".lora_B.bias", "bias"),
    (".alpha", "alpha"),
    (".diff", "diff"),
    (".diff_b", "bias"),
    (".diff_m", "modulation"),
)
_LORA_MATRIX = re.compile(r"\.lora_(down|up|A|B)\.weight$")
_PREFIXES = ("diffusion_model.", "transformer.", "lora_unet_")


def _original_name(name: str) -> str:
    """The original Wan name of a diffusers WanTransformer3DModel module or parameter."""
    if name == "scale_shift_table":
        return "head.modulation"
    name += "."
    for diffusers, wan in _TO_ORIGINAL:
        name = name.replace(diffusers, wan)
    return name[:-1]


def _original_shapes(transformer: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Original Wan parameter name -> shape, for every parameter of `transformer` (adapters it holds left out)."""
    shapes = {}
    for name, tensor in transformer.state_dict().items():
        # A transformer that already holds a LoRA wraps each adapted layer: `to_q.base_layer.weight`, `to_q.lora_A.x`.
        if ".lora_" not in name:
            shapes[_original_name(name.replace(".base_layer.", "."))] = tuple(tensor.shape)
    return shapes


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            return {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except FileNotFoundError:
        raise NotAWanLora(f"{path} does not exist") from None
    except (SafetensorError, OSError) as exc:
        raise NotAWanLora(f"{path} is not a safetensors file: {exc}") from None


def _layer_and_kind(key: str, kohya: dict[str, str]) -> tuple[str, str] | None:
    """(original Wan layer name, what the tensor is) for a key of any known layout, or None."""
    prefix = next((prefix for prefix in _PREFIXES if key.startswith(prefix)), None)
    kind = next(((suffix, kind) for suffix, kind in _KINDS if key.endswith(suffix)), None)
    if prefix is None or kind is None:
        return None
    layer = key[len(prefix) : -len(kind[0])]
    if prefix == "transformer.":
        layer = _original_name(layer)
    elif prefix == "lora_unet_":
        layer = kohya.get(layer)
    return (layer, kind[1]) if layer else None


def _param(layer: str, kind: str) -> str:
    """The original Wan parameter a tensor of this kind changes."""
    if kind == "modulation":
        return f"{layer}.modulation"
    return f"{layer}.bias" if kind == "bias" else f"{layer}.weight"


def _misfit(layer: str, kinds: dict[str, tuple[int, ...]], params: dict[str, tuple[int, ...]]) -> str | None:
    """What does not fit in one layer's tensors (None if they all fit)."""
    if ("lora_down" in kinds) != ("lora_up" in kinds):
        have, lack = ("lora_down", "lora_up") if "lora_down" in kinds else ("lora_up", "lora_down")
        return f"{layer} has a {have} but no {lack}"
    if "lora_down" in kinds:
        down, up, weight = kinds["lora_down"], kinds["lora_up"], params[f"{layer}.weight"]
        if len(down) != 2 or len(up) != 2 or up[1] != down[0] or (up[0], down[1]) != weight:
            return f"{layer}: lora_up {list(up)} x lora_down {list(down)} for a weight of {list(weight)}"
    for kind in ("diff", "bias", "modulation"):
        if kind in kinds and kinds[kind] != params[_param(layer, kind)]:
            return f"{layer}: a {kind} of {list(kinds[kind])} for one of {list(params[_param(layer, kind)])}"
    if "alpha" in kinds and math.prod(kinds["alpha"]) != 1:
        return f"{layer}: an alpha of shape {list(kinds['alpha'])}, not a scalar"
    return None


def _examples(keys: Iterable[str], count: int = 3) -> str:
    return ", ".join(sorted(keys)[:count])

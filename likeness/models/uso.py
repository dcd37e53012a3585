"""ByteDance USO (bytedance-research/USO) for diffusers' FLUX.1 transformer: a refine conditioned on a subject image.

USO conditions FLUX.1-dev in three ways, all reproduced here on diffusers' `FluxTransformer2DModel`:

- a DiT LoRA (`uso_flux_v1.0/dit_lora.safetensors`, XLabs layout), which diffusers converts on load; it is fused,
  so a conditioned step costs a base step plus the subject tokens' share of attention;
- the subject ("content") image's VAE latents, packed like the target's, appended after the target's image tokens
  with positions shifted past the target's grid on both axes (USO's pe="d"), clean at every step; the
  transformer's output is cut back to the target's tokens;
- optionally "style" tokens: SigLIP (google/siglip-so400m-patch14-384) hidden states from three depths, projected by
  `uso_flux_v1.0/projector.safetensors` to the transformer's width and put before the text tokens (after
  `context_embedder`) at position 0.

    import torch
    from diffusers import FluxImg2ImgPipeline
    from PIL import Image
    from likeness.models.tiny import build_tiny_models
    from likeness.models.uso import conditioned, encode_subject, load_uso_encoders, load_uso_lora, subject_image

    tiny = build_tiny_models("/tmp/tiny", roles=["refiner", "uso", "siglip"])
    pipe = FluxImg2ImgPipeline.from_pretrained(tiny["refiner"], dtype=torch.float32)
    load_uso_lora(pipe, tiny["uso"] / "uso_flux_v1.0/dit_lora.safetensors")
    encoders = load_uso_encoders(tiny["uso"] / "uso_flux_v1.0/projector.safetensors", tiny["siglip"],
                                 torch.float32, torch.device("cpu"))
    subject = subject_image(Image.new("RGB", (90, 120), "gray"), long_side=64)
    condition = encode_subject(pipe, subject, encoders)
    with conditioned(pipe.transformer, condition):
        tile = pipe(prompt="a portrait", image=Image.new("RGB", (64, 64)), height=64, width=64, strength=0.5,
                    num_inference_steps=2).images[0]
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

# The projector's three readings of SigLIP's hidden states (negative indices into `hidden_states`), in the order
# its outputs are concatenated.
STYLE_LEVELS = (("high", -2), ("mid", -11), ("low", -20))
PROJECTOR_PREFIX = "feature_embedder."

# Every key of the published DiT LoRA: XLabs processors on BFL's FLUX block names.
_LORA_KEY = re.compile(
    r"(double_blocks\.\d+\.processor\.(qkv|proj)_lora[12]|single_blocks\.\d+\.processor\.(qkv|proj)_lora)"
    r"\.(down|up)\.weight"
)


class StyleProjector(torch.nn.Module):
    """USO's SigLIP multi-feature projector: for each of three SigLIP depths, a token-axis linear map (SigLIP tokens
    to style tokens, then SiLU), a LayerNorm over SigLIP's width and a projection to the transformer's width.
    Parameter names are the published file's, less its `feature_embedder.` prefix."""

    def __init__(self, siglip_tokens: int, style_tokens: int, siglip_dim: int, hidden_size: int):
        super().__init__()
        for level, _ in STYLE_LEVELS:
            tokens = torch.nn.Sequential(torch.nn.Linear(siglip_tokens, style_tokens), torch.nn.SiLU())
            setattr(self, f"{level}_embedding_linear", tokens)
            setattr(self, f"{level}_layer_norm", torch.nn.LayerNorm(siglip_dim))
            setattr(self, f"{level}_projection", torch.nn.Linear(siglip_dim, hidden_size))

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """SigLIP's `hidden_states` (embeddings then each layer, each (B, tokens, dim)) -> (B, 3 * style, hidden)."""
        dtype = self.high_projection.weight.dtype
        out = []
        for level, index in STYLE_LEVELS:
            # The linear map mixes tokens, not channels: it runs over the transposed token axis.
            tokens = getattr(self, f"{level}_embedding_linear")(hidden_states[index].to(dtype).transpose(1, 2))
            normed = getattr(self, f"{level}_layer_norm")(tokens.transpose(1, 2))
            out.append(getattr(self, f"{level}_projection")(normed))
        return torch.cat(out, dim=1)

    @classmethod
    def from_file(cls, path: Path, dtype: torch.dtype, device: torch.device | str) -> StyleProjector:
        """The projector in the published file at `path`, every size read from its tensors' shapes."""
        from safetensors.torch import load_file

        tensors = load_file(path)
        if f"{PROJECTOR_PREFIX}mid_layer_norm.bias" not in tensors:
            raise ValueError(f"{Path(path).name}: no {PROJECTOR_PREFIX}mid_layer_norm.bias; is it USO's projector?")
        state = {key.removeprefix(PROJECTOR_PREFIX): value for key, value in tensors.items()}
        style_tokens, siglip_tokens = state["high_embedding_linear.0.weight"].shape
        hidden_size, siglip_dim = state["high_projection.weight"].shape
        projector = cls(siglip_tokens, style_tokens, siglip_dim, hidden_size)
        try:
            projector.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{Path(path).name}: not laid out as USO's projector: {exc}") from exc
        return projector.to(device=device, dtype=dtype).eval()


def load_uso_lora(pipe: Any, path: Path) -> int:
    """Load USO's DiT LoRA at `path` into `pipe.transformer` as diffusers loads the published file, check that each
    of its layers found its layer, and fuse it at scale 1; returns the number of adapted layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open

    path = Path(path)
    refusal = f"{path.name}: is it a USO LoRA for FLUX.1?"
    with safe_open(path, framework="pt") as weights:
        keys = list(weights.keys())
    if not keys or not all(_LORA_KEY.fullmatch(key) for key in keys):
        raise ValueError(f"{refusal} Its keys are not XLabs LoRA processors on FLUX.1 blocks")
    # diffusers splits each fused qkv LoRA into q, k and v layers sharing one `down`.
    expected = sum(3 if ".qkv_" in key else 1 for key in keys if key.endswith(".down.weight"))
    try:
        pipe.load_lora_weights(path)
    except (ValueError, RuntimeError, KeyError) as exc:
        # peft and diffusers refuse mismatched layers in words about their own internals.
        raise ValueError(f"{refusal} Loading it failed: {exc}") from exc
    # diffusers only logs the keys that match no layer; a LoRA for a smaller model must not pass.
    loaded = sum(isinstance(module, BaseTunerLayer) for module in pipe.transformer.modules())
    if loaded != expected:
        pipe.unload_lora_weights()
        raise ValueError(f"{refusal} {loaded} of its {expected} layers match a layer of the transformer")
    # XLabs LoRAs carry no alpha: they apply at scale 1, as USO's processors do.
    pipe.fuse_lora(lora_scale=1.0)
    # The fused weights stay; the LoRA layers go, so a step costs what a base step costs.
    pipe.unload_lora_weights()
    return expected


@dataclass(frozen=True)
class UsoEncoders:
    """What turns a style image into style tokens: SigLIP's image processor and vision tower, and the projector."""

    processor: Any
    encoder: Any
    projector: StyleProjector


def load_uso_encoders(
    projector_file: Path, image_encoder_dir: Path, dtype: torch.dtype, device: torch.device | str
) -> UsoEncoders:
    from transformers import SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    # The PIL processor is the one USO ran with (the torchvision one resizes slightly differently, and is missing
    # where torchvision is).
    processor = SiglipImageProcessorPil.from_pretrained(image_encoder_dir)
    encoder = SiglipVisionModel.from_pretrained(image_encoder_dir, dtype=dtype).to(device).eval()
    return UsoEncoders(processor, encoder, StyleProjector.from_file(projector_file, dtype, device))


@dataclass(frozen=True)
class SubjectCondition:
    """The subject image as the transformer sees it: packed latents (1, rows * cols, 4 * latent channels) on a
    (rows, cols) grid, and the projected style tokens (1, S, hidden) or None."""

    tokens: torch.Tensor
    grid: tuple[int, int]
    style: torch.Tensor | None = None


def subject_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """USO's subject size for an image of `width` x `height`: the long side scaled to `long_side`, then each side
    cut down to a multiple of 16 (USO resizes to the first size, then centre-crops to this one)."""
    w, h = _scaled(width, height, long_side)
    if w < 16 or h < 16:
        raise ValueError(f"a {width}x{height} image is too narrow for a subject of long side {long_side}")
    return w // 16 * 16, h // 16 * 16


def subject_image(image: Image.Image, long_side: int) -> Image.Image:
    """`image` resized and centre-cropped as USO prepares its subject image (Lanczos, then the centre crop)."""
    w, h = _scaled(*image.size, long_side)
    crop_w, crop_h = subject_size(*image.size, long_side)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    resized = image.convert("RGB").resize((w, h), resample=Image.LANCZOS)
    return resized.crop((left, top, left + crop_w, top + crop_h))


def _scaled(width: int, height: int, long_side: int) -> tuple[int, int]:
    if width >= height:
        return long_side, int(long_side / width * height)
    return int(long_side / height * width), long_side


@torch.no_grad()
def encode_subject(pipe: Any, image: Image.Image, encoders: UsoEncoders | None) -> SubjectCondition:
    """The condition for the subject `image` (each side a multiple of 16): its VAE latents packed as `pipe` packs
    its latents, and, when `encoders` are given, the same image's style tokens."""
    width, height = image.size
    if width % 16 or height % 16:
        raise ValueError(f"the subject image is {width}x{height}; each side must be a multiple of 16 (subject_size)")
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(image.convert("RGB"), height=height, width=width)
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    # The distribution's mode, as diffusers' Kontext encodes its reference images: a condition should not change
    # from one call to the next (USO's own encoder samples; FLUX's VAE is near deterministic, so the two agree).
    latents = vae.encode(pixels).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    channels, rows, cols = latents.shape[1], latents.shape[2] // 2, latents.shape[3] // 2
    tokens = pipe._pack_latents(latents, 1, channels, 2 * rows, 2 * cols)
    style = None
    if encoders is not None:
        inputs = encoders.processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(device=encoders.encoder.device, dtype=encoders.encoder.dtype)
        hidden_states = encoders.encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        style = encoders.projector(hidden_states)
    return SubjectCondition(tokens=tokens, grid=(rows, cols), style=style)


def subject_ids(img_ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """USO's "d" positions for a subject on `grid` (rows, cols) beside a target whose positions are `img_ids`:
    axis 0 is 0, rows and columns each start just past the target's."""
    rows, cols = grid
    row_offset = int(img_ids[..., 1].max()) + 1
    col_offset = int(img_ids[..., 2].max()) + 1
    ids = torch.zeros(rows, cols, 3, device=img_ids.device, dtype=img_ids.dtype)
    ids[..., 1] = torch.arange(rows, device=img_ids.device)[:, None] + row_offset
    ids[..., 2] = torch.arange(cols, device=img_ids.device)[None, :] + col_offset
    ids = ids.reshape(rows * cols, 3)
    # diffusers still accepts (deprecated) batched ids; answer in the shape asked.
    return ids.expand(img_ids.shape[0], -1, -1) if img_ids.ndim == 3 else ids


@contextmanager
def conditioned(transformer: torch.nn.Module, condition: SubjectCondition) -> Iterator[None]:
    """While inside, every call of the FLUX.1 `transformer` sees the subject (and style) tokens of `condition` and
    answers for the target's tokens only."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    signature = inspect.signature(transformer.forward)
    target_tokens: list[int] = []

    def before(module, args, kwargs):
        if args:  # pipelines call with keywords only
            kwargs = dict(signature.bind_partial(*args, **kwargs).arguments)
        hidden = kwargs["hidden_states"]
        target_tokens.append(hidden.shape[1])
        subject = condition.tokens.to(device=hidden.device, dtype=hidden.dtype).expand(hidden.shape[0], -1, -1)
        kwargs["hidden_states"] = torch.cat([hidden, subject], dim=1)
        kwargs["img_ids"] = torch.cat([kwargs["img_ids"], subject_ids(kwargs["img_ids"], condition.grid)], dim=-2)
        if condition.style is not None:
            txt_ids = kwargs["txt_ids"]
            style_ids = txt_ids.new_zeros((*txt_ids.shape[:-2], condition.style.shape[1], txt_ids.shape[-1]))
            kwargs["txt_ids"] = torch.cat([style_ids, txt_ids], dim=-2)
        return (), kwargs

    def prepend_style(module, args, text):
        style = condition.style.to(device=text.device, dtype=text.dtype).expand(text.shape[0], -1, -1)
        return torch.cat([style, text], dim=1)

    def after(module, args, output):
        keep = target_tokens.pop()
        if isinstance(output, tuple):
            return (output[0][:, :keep], *output[1:])
        return Transformer2DModelOutput(sample=output.sample[:, :keep])

    handles = [
        transformer.register_forward_pre_hook(before, with_kwargs=True),
        transformer.register_forward_hook(after),
    ]
    try:
        if condition.style is not None:
            handles.append(transformer.context_embedder.register_forward_hook(prepend_style))
        yield
    finally:
        for handle in handles:
            handle.remove()

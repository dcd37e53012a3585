"""Does likeness.models.uso compute what ByteDance's USO code computes? Both run on the same tiny random weights.

    .venv/bin/python bench/uso_faithfulness.py [--reference /tmp/uso-reference]

The reference is a checkout of github.com/bytedance/USO, imported from `--reference` at run time (its model,
layers and sampling modules; not its pipeline module, which needs torchvision). The tiny refiner (FLUX.1 layout)
and the tiny USO files are built into a temp folder; the reference `Flux` gets the tiny transformer's weights under
BFL's names, USO's LoRA processors loaded from the tiny LoRA file and the projector from the tiny projector file.
Ours loads the same files with `load_uso_lora` (fused into diffusers' transformer) and `load_uso_encoders`. In
float32, on the same inputs, it prints the largest absolute difference of:

  (a) the projector, on the same SigLIP hidden states;
  (b) one double-stream and one single-stream block with the LoRA, on target + subject tokens at USO's positions;
  (c) the whole transformer with subject and style tokens (ours: inside `conditioned`);
  (d) the sampling loop: USO's `denoise` on USO's schedule against `FluxImg2ImgPipeline` at strength 1.0 from the
      same packed noise, with the same prompt embeddings, inside `conditioned`.

Exits 1 unless every difference is below 1e-4 (floating-point noise). About 15 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

NOISE = 1e-4
TARGET = (64, 48)  # width, height of the target: a 3 x 4 packed grid
SUBJECT = (32, 48)  # of the subject: 3 x 2, so rows and columns cannot be confused
STEPS, GUIDANCE, TIMESTEP = 4, 4.0, 0.7


def bfl_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' FLUX.1 transformer weights under BFL's names: the inverse of diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers`, which hard-codes the width 3072 so cannot serve here."""
    left = dict(weights)
    out = {}

    def take(bfl: str, ours: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{bfl}.{kind}"] = left.pop(f"{ours}.{kind}")

    def fuse(bfl: str, ours: list[str]) -> None:
        for kind in ("weight", "bias"):
            out[f"{bfl}.{kind}"] = torch.cat([left.pop(f"{name}.{kind}") for name in ours])

    embedders = (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder"))
    for bfl, ours in embedders:
        take(f"{bfl}.in_layer", f"time_text_embed.{ours}.linear_1")
        take(f"{bfl}.out_layer", f"time_text_embed.{ours}.linear_2")
    take("txt_in", "context_embedder")
    take("img_in", "x_embedder")
    for i in range(1 + max(int(k.split(".")[1]) for k in weights if k.startswith("transformer_blocks."))):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        take(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        take(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        fuse(f"{b}.img_attn.qkv", [f"{d}.attn.to_{x}" for x in "qkv"])
        fuse(f"{b}.txt_attn.qkv", [f"{d}.attn.add_{x}_proj" for x in "qkv"])
        take(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        take(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        for bfl, ours in (("img_attn", ""), ("txt_attn", "added_")):
            out[f"{b}.{bfl}.norm.query_norm.scale"] = left.pop(f"{d}.attn.norm_{ours}q.weight")
            out[f"{b}.{bfl}.norm.key_norm.scale"] = left.pop(f"{d}.attn.norm_{ours}k.weight")
        for bfl, ours in (("img_mlp", "ff"), ("txt_mlp", "ff_context")):
            take(f"{b}.{bfl}.0", f"{d}.{ours}.net.0.proj")
            take(f"{b}.{bfl}.2", f"{d}.{ours}.net.2")
    for i in range(1 + max(int(k.split(".")[1]) for k in weights if k.startswith("single_transformer_blocks."))):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        take(f"{b}.modulation.lin", f"{d}.norm.linear")
        fuse(f"{b}.linear1", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"])
        take(f"{b}.linear2", f"{d}.proj_out")
        out[f"{b}.norm.query_norm.scale"] = left.pop(f"{d}.attn.norm_q.weight")
        out[f"{b}.norm.key_norm.scale"] = left.pop(f"{d}.attn.norm_k.weight")
    take("final_layer.linear", "proj_out")
    for kind in ("weight", "bias"):
        # diffusers' AdaLayerNormContinuous splits into (scale, shift); BFL's LastLayer into (shift, scale).
        scale, shift = left.pop(f"norm_out.linear.{kind}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
    if left:
        raise ValueError(f"unmapped diffusers weights: {sorted(left)}")
    return out


def reference_flux(uso, transformer, lora_file: Path, projector_file: Path, encoder):
    """USO's `Flux` at the tiny transformer's size, with its weights, USO's LoRA processors and projector."""
    from safetensors.torch import load_file

    config = transformer.config
    hidden = config.num_attention_heads * config.attention_head_dim
    params = uso.FluxParams(
        in_channels=config.in_channels, vec_in_dim=config.pooled_projection_dim,
        context_in_dim=config.joint_attention_dim, hidden_size=hidden, mlp_ratio=4.0,
        num_heads=config.num_attention_heads, depth=config.num_layers, depth_single_blocks=config.num_single_layers,
        axes_dim=list(config.axes_dims_rope), theta=10_000, qkv_bias=True, guidance_embed=config.guidance_embeds,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line on construction
        model = uso.Flux(params)
    lora = {key: value.float() for key, value in load_file(lora_file).items()}
    rank = lora["double_blocks.0.processor.qkv_lora1.down.weight"].shape[0]
    processors = {}
    for name in model.attn_processors:
        if name.startswith("single_blocks"):
            processor = uso.SingleStreamBlockLoraProcessor(dim=hidden, rank=rank)
            # USO hard-codes FLUX.1-dev's 3072 + 12288 = 15360 inputs of the single blocks' proj LoRA.
            processor.proj_lora = uso.LoRALinearLayer(hidden + int(hidden * params.mlp_ratio), hidden, rank)
        else:
            processor = uso.DoubleStreamBlockLoraProcessor(dim=hidden, rank=rank)
        processors[name] = processor
    model.set_attn_processor(processors)
    projector = {key: value.float() for key, value in load_file(projector_file).items()}
    style_tokens, siglip_tokens = projector["feature_embedder.high_embedding_linear.0.weight"].shape
    # USO builds FLUX.1-dev's projector (729 SigLIP tokens of 1152 to 64 style tokens); here the tiny one's sizes.
    model.feature_embedder = uso.SigLIPMultiFeatProjModel(
        siglip_token_nums=siglip_tokens, style_token_nums=style_tokens,
        siglip_token_dims=projector["feature_embedder.high_projection.weight"].shape[1], hidden_size=hidden,
        context_layer_norm=True,
    )  # fmt: skip
    state = bfl_state_dict(transformer.state_dict()) | lora | projector
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"reference Flux: missing {missing}, unexpected {unexpected}")
    model.vision_encoder = encoder
    return model.eval()


def import_reference(checkout: Path):
    if not (checkout / "uso" / "flux" / "model.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of bytedance/USO (no uso/flux/model.py)")
    os.environ.setdefault("TQDM_DISABLE", "1")  # denoise's progress bar
    sys.path.insert(0, str(checkout))
    from uso.flux import model, sampling
    from uso.flux.modules import layers

    return argparse.Namespace(
        Flux=model.Flux, FluxParams=model.FluxParams, denoise=sampling.denoise, get_schedule=sampling.get_schedule,
        prepare_multi_ip=sampling.prepare_multi_ip, LoRALinearLayer=layers.LoRALinearLayer,
        SigLIPMultiFeatProjModel=layers.SigLIPMultiFeatProjModel,
        DoubleStreamBlockLoraProcessor=layers.DoubleStreamBlockLoraProcessor,
        SingleStreamBlockLoraProcessor=layers.SingleStreamBlockLoraProcessor,
    )  # fmt: skip


def test_image(size: tuple[int, int]) -> Image.Image:
    return Image.effect_mandelbrot(size, (-2.0, -1.2, 0.8, 1.2), 40).convert("RGB").rotate(30)


@torch.no_grad()
def measure(uso, root: Path) -> list[tuple[str, float]]:
    from diffusers import FluxImg2ImgPipeline

    from likeness.models.tiny import build_tiny_models
    from likeness.models.uso import conditioned, encode_subject, load_uso_encoders, load_uso_lora

    tiny = build_tiny_models(root, roles=["refiner", "uso", "siglip"])
    lora_file = tiny["uso"] / "uso_flux_v1.0" / "dit_lora.safetensors"
    projector_file = tiny["uso"] / "uso_flux_v1.0" / "projector.safetensors"
    pipe = FluxImg2ImgPipeline.from_pretrained(tiny["refiner"], dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    encoders = load_uso_encoders(projector_file, tiny["siglip"], torch.float32, "cpu")
    # The reference gets the base weights, then applies the LoRA in its processors; ours fuses it.
    reference = reference_flux(uso, transformer, lora_file, projector_file, encoders.encoder)
    load_uso_lora(pipe, lora_file)

    subject = test_image(SUBJECT)
    condition = encode_subject(pipe, subject, encoders)
    # The same pixel values for both: this compares the models, not two builds of SigLIP's image processor.
    siglip_inputs = [encoders.processor(images=subject, return_tensors="pt")]
    # The reference encodes its subject with BFL's autoencoder (sampling); a tiny one of those does not exist, so
    # both sides take the same latents, which the reference packs and positions itself.
    pixels = pipe.image_processor.preprocess(subject, height=SUBJECT[1], width=SUBJECT[0])
    subject_latents = pipe.vae.encode(pixels).latent_dist.mode()
    subject_latents = (subject_latents - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor

    generator = torch.Generator().manual_seed(0)
    channels = pipe.vae.config.latent_channels
    noise = torch.randn(1, channels, TARGET[1] // 8, TARGET[0] // 8, generator=generator)
    text = torch.randn(1, 5, transformer.config.joint_attention_dim, generator=generator)
    pooled = torch.randn(1, transformer.config.pooled_projection_dim, generator=generator)
    inputs = uso.prepare_multi_ip(
        t5=lambda prompt: text, clip=lambda prompt: pooled, img=noise, prompt="", ref_imgs=[subject_latents], pe="d"
    )
    rows, cols = TARGET[1] // 16, TARGET[0] // 16
    img_ids = pipe._prepare_latent_image_ids(1, rows, cols, "cpu", torch.float32)
    packed_noise = pipe._pack_latents(noise, 1, channels, 2 * rows, 2 * cols)
    results = []

    hidden_states = encoders.encoder(**siglip_inputs[0], output_hidden_states=True)
    projected = encoders.projector(hidden_states.hidden_states)
    results.append(("(a) projector", reference.feature_embedder(hidden_states), projected))

    width = transformer.inner_dim
    style_tokens = condition.style.shape[1]
    img = torch.randn(1, rows * cols + condition.tokens.shape[1], width, generator=generator)
    txt = torch.randn(1, style_tokens + text.shape[1], width, generator=generator)
    vec = torch.randn(1, width, generator=generator)
    txt_ids = torch.zeros(1, txt.shape[1], 3)
    ids = torch.cat([txt_ids, inputs["img_ids"], inputs["ref_img_ids"][0]], dim=1)
    pe, rotary = reference.pe_embedder(ids), transformer.pos_embed(ids[0])
    ours_txt, ours_img = transformer.transformer_blocks[0](
        hidden_states=img, encoder_hidden_states=txt, temb=vec, image_rotary_emb=rotary
    )
    ref_img, ref_txt = reference.double_blocks[0](img=img, txt=txt, vec=vec, pe=pe)
    results.append(("(b) double-stream block", torch.cat([ref_txt, ref_img], 1), torch.cat([ours_txt, ours_img], 1)))
    ours_txt, ours_img = transformer.single_transformer_blocks[0](
        hidden_states=img, encoder_hidden_states=txt, temb=vec, image_rotary_emb=rotary
    )
    reference_single = reference.single_blocks[0](torch.cat([txt, img], 1), vec=vec, pe=pe)
    results.append(("(b) single-stream block", reference_single, torch.cat([ours_txt, ours_img], 1)))

    timestep, guidance = torch.full((1,), TIMESTEP), torch.full((1,), GUIDANCE)
    expected = reference(
        img=inputs["img"], img_ids=inputs["img_ids"], txt=text, txt_ids=inputs["txt_ids"], timesteps=timestep,
        y=pooled, guidance=guidance, ref_img=inputs["ref_img"], ref_img_ids=inputs["ref_img_ids"],
        siglip_inputs=siglip_inputs,
    )  # fmt: skip
    with conditioned(transformer, condition):
        ours = transformer(
            hidden_states=packed_noise, encoder_hidden_states=text, pooled_projections=pooled, timestep=timestep,
            img_ids=img_ids, txt_ids=torch.zeros(text.shape[1], 3), guidance=guidance, return_dict=False,
        )[0]  # fmt: skip
    results.append(("(c) transformer, subject + style", expected, ours))

    schedule = uso.get_schedule(STEPS, rows * cols)
    expected = uso.denoise(reference, **inputs, timesteps=schedule, guidance=GUIDANCE, siglip_inputs=siglip_inputs)
    with conditioned(transformer, condition):
        ours = pipe(
            image=Image.new("RGB", TARGET), prompt_embeds=text, pooled_prompt_embeds=pooled, strength=1.0,
            num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=packed_noise, output_type="latent",
            height=TARGET[1], width=TARGET[0],
        ).images  # fmt: skip
    results.append(("(d) schedule (sigmas)", torch.tensor(schedule), pipe.scheduler.sigmas))
    results.append((f"(d) sampling loop, {STEPS} steps", expected, ours))
    return [(name, (a.float() - b.float()).abs().max().item()) for name, a, b in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("/tmp/uso-reference"), help="a bytedance/USO checkout")
    args = parser.parse_args()
    uso = import_reference(args.reference)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(uso, Path(tmp))
    print(f"USO reference ({args.reference}) against likeness.models.uso, tiny random weights, float32, CPU")
    print(f"  {'part':<36} {'max |difference|':>16}")
    for name, difference in results:
        print(f"  {name:<36} {difference:>16.3e}")
    differing = [name for name, difference in results if not difference < NOISE]
    if differing:
        print(f"verdict: NOT at floating-point noise (>= {NOISE:g}): {', '.join(differing)}")
        sys.exit(1)
    print(f"verdict: at floating-point noise (every difference below {NOISE:g})")


if __name__ == "__main__":
    main()

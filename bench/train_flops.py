"""FLOPs of one LoRA training step at production shapes, counted on the real-size Wan transformers, and what a LoRA
costs on a rented H100.

    .venv/bin/python bench/train_flops.py [--price 2.69]

The transformers are built on PyTorch's `meta` device from their published configurations (no weights) with the
LoRA our trainer adds, and `torch.utils.flop_counter.FlopCounterMode` counts one forward and one backward pass at
the training shape: one 512 px image (the production `train.size`) and UMT5's 512 text tokens. With gradient
checkpointing the forward pass runs twice. The GPU's sustained throughput is calibrated on one published figure:
Wan 2.2 T2V-A14B renders 720p 81 frames in 40 steps with CFG (80 evaluations) in 1041 s on one H100 (Wan 2.2's
README); the same counter gives the FLOPs of those evaluations. Figures, not a test.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from peft import LoraConfig
from torch.utils.flop_counter import FlopCounterMode

from likeness.models.profiles import load_profile
from likeness.training.wan_lora import LORA_TARGETS

# transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers (each Wan 2.2 A14B expert has the same), and of
# Wan-AI/Wan2.2-TI2V-5B-Diffusers.
COMMON = {
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "freq_dim": 256,
    "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "wan21_14b": {**COMMON, "ffn_dim": 13824, "in_channels": 16, "num_attention_heads": 40, "num_layers": 40,
                  "out_channels": 16},
    "wan22_5b": {**COMMON, "ffn_dim": 14336, "in_channels": 48, "num_attention_heads": 24, "num_layers": 30,
                 "out_channels": 48},
}  # fmt: skip
# Pixels per latent pixel: Wan 2.1's VAE (also A14B's) and Wan 2.2's 5B VAE.
VAE_SCALE = {"wan21_14b": 8, "wan22_5b": 16}
TEXT_TOKENS = 512
H100_RENDER_SECONDS = 1041  # Wan 2.2 README: T2V-A14B, 1280x720, 81 frames, 40 steps, one H100


def transformer(base: str, rank: int | None) -> WanTransformer3DModel:
    """The real-size transformer on the meta device, frozen, with our trainer's LoRA when `rank` is given."""
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = WanTransformer3DModel(**CONFIGS[base]).to(torch.bfloat16)
    model.requires_grad_(False)
    if rank:
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)))
    return model


def latent(base: str, frames: int, height: int, width: int) -> torch.Tensor:
    channels, scale = CONFIGS[base]["in_channels"], VAE_SCALE[base]
    return torch.empty(1, channels, (frames - 1) // 4 + 1, height // scale, width // scale, device="meta",
                       dtype=torch.bfloat16)  # fmt: skip


def counted(model: WanTransformer3DModel, hidden: torch.Tensor, backward: bool) -> tuple[float, float]:
    """(forward, backward) FLOPs of one evaluation."""
    text = torch.empty(1, TEXT_TOKENS, 4096, device="meta", dtype=torch.bfloat16)
    timestep = torch.zeros(1, device="meta", dtype=torch.long)
    with FlopCounterMode(display=False) as forward:
        out = model(hidden_states=hidden, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    if not backward:
        return forward.get_total_flops(), 0.0
    with FlopCounterMode(display=False) as backward_pass:
        out.float().square().mean().backward()
    return forward.get_total_flops(), backward_pass.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--price", type=float, default=2.69, help="H100 dollars per hour (RunPod secure, assumed)")
    args = parser.parse_args()

    render_forward, _ = counted(transformer("wan21_14b", None), latent("wan21_14b", 81, 720, 1280), backward=False)
    sustained = 80 * render_forward / H100_RENDER_SECONDS
    print(f"calibration: one A14B evaluation at 720p 81 frames = {render_forward / 1e12:.0f} TFLOP;")
    print(f"  80 of them in {H100_RENDER_SECONDS} s on an H100 = {sustained / 1e12:.0f} TFLOP/s sustained (bf16)")

    train = load_profile("production").train
    print(f"\nproduction training: {train.steps} steps at {train.size} px, rank {train.rank}, "
          f"gradient checkpointing {'on' if train.gradient_checkpointing else 'off'}")  # fmt: skip
    for base in ("wan22_5b", "wan21_14b"):
        model = transformer(base, train.rank)
        params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        forward, backward = counted(model, latent(base, 1, train.size, train.size), backward=True)
        evaluations = 2 if train.gradient_checkpointing else 1
        step = evaluations * forward + backward
        # Samples: each sampled checkpoint renders every sample prompt, with CFG doubling the evaluations.
        sampled = len(range(train.sample_interval, train.steps + 1, train.sample_interval))
        cfg = 2 if train.sample_guidance_scale > 1 else 1
        sample_evaluations = sampled * len(train.sample_prompts) * train.sample_steps * cfg
        total = train.steps * step + sample_evaluations * forward
        seconds = total / sustained
        print(f"\n{base}: {params / 1e9:.2f} B parameters; per training step: {evaluations} forward evaluations "
              f"({forward / 1e12:.2f} TFLOP each) + backward {backward / 1e12:.2f} TFLOP "
              f"= {step / 1e12:.2f} TFLOP")  # fmt: skip
        print(f"  {train.steps} steps x {step / 1e12:.2f} TFLOP + {sample_evaluations} sample evaluations x "
              f"{forward / 1e12:.2f} TFLOP = {total / 1e15:.1f} PFLOP")  # fmt: skip
        print(f"  at {sustained / 1e12:.0f} TFLOP/s: {seconds:.0f} s = {seconds / 3600:.2f} h x ${args.price}/h "
              f"= ${seconds / 3600 * args.price:.2f} (compute only: a short sequence runs below the calibrated "
              "throughput, and pod start, model download and latent caching come on top)")  # fmt: skip


if __name__ == "__main__":
    main()

"""FLOPs of one LoRA training step at production shapes, counted on the real-size Wan transformers, and what a LoRA
costs on a rented H100.

    .venv/bin/python bench/train_flops.py [--price 2.69]

The transformers are built on PyTorch's `meta` device from their published configurations (no weights) with the LoRA our
trainer adds, and `torch.utils.flop_counter.FlopCounterMode` counts one forward and one backward pass at the training
shape: one 512 px image (the production `train.size`) and UMT5's 512 text tokens. With gradient checkpointing
(production's `auto` decides it off on an H100) the forward pass runs twice. The GPU's sustained throughput is
calibrated on one published figure: Wan 2.2 T2V-A14B renders 720p 81 frames in 40 steps with CFG (80 evaluations) in
1041 s on one H100 (Wan 2.2's README); the same counter gives the FLOPs of those evaluations. Figures, not a test.
"""

from __future__ import annotations

import argparse

from likeness.config import RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.estimate.gpus import GPUS
from likeness.estimate.training import checkpointing_decided
from likeness.models.profiles import load_profile
from likeness.models.wan_flops import count_evaluation, latent_shape, meta_transformer
from likeness.models.wan_lora import LORA_TARGETS

H100_RENDER_SECONDS = 1041  # Wan 2.2 README: T2V-A14B, 1280x720, 81 frames, 40 steps, one H100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--price", type=float, default=2.69, help="H100 dollars per hour (RunPod secure, assumed)")
    args = parser.parse_args()

    render_forward, _ = count_evaluation(meta_transformer("wan22_14b"), latent_shape("wan22_14b", 81, 720, 1280))
    sustained = 80 * render_forward / H100_RENDER_SECONDS
    print(f"calibration: one A14B evaluation at 720p 81 frames = {render_forward / 1e12:.0f} TFLOP;")
    print(f"  80 of them in {H100_RENDER_SECONDS} s on an H100 = {sustained / 1e12:.0f} TFLOP/s sustained (bf16)")

    profile = load_profile("production")
    config = RunConfig.from_profile(profile, {})
    images = len(load_catalogue().shots(config.dataset.variations, garments=0, poses=0))
    # `auto` decided for the H100 this prices, as `likeness estimate` decides it.
    train = checkpointing_decided(config.train, images, profile, GPUS["H100"].memory_gib * 2**30)
    print(f"\nproduction training: {train.steps} steps at {train.size} px, rank {train.rank}, "
          f"gradient checkpointing {'on' if train.gradient_checkpointing else 'off'}")  # fmt: skip
    for base in ("wan22_14b", "wan22_5b"):
        model = meta_transformer(base, train.rank, LORA_TARGETS)
        params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        forward, backward = count_evaluation(model, latent_shape(base, 1, train.size, train.size), backward=True)
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

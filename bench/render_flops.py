"""Transformer evaluations and FLOPs of a render under the production settings, before and after the rendering
issue, and as the seed rendered: counted on the real-size Wan transformers on the meta device.

    .venv/bin/python bench/render_flops.py

A 720p (1280x720) 81-frame video and a 720p image. Before: the foundation rendered Wan 2.2 TI2V-5B for 30 steps
with CFG (two evaluations a step). After: Wan 2.2 T2V-A14B with the lightx2v 4-step LoRAs, no CFG (4 evaluations,
two per expert; a LoRA adds under 1% to an evaluation). The seed: the A14B at 30 steps with CFG, and with the
4-step LoRAs. Figures, not a test.
"""

from __future__ import annotations

from likeness.models.profiles import load_profile
from likeness.models.wan_flops import count_evaluation, latent_shape, meta_transformer

HEIGHT, WIDTH, FRAMES = 720, 1280, 81


def per_evaluation(base: str) -> dict[str, int]:
    """FLOPs of one evaluation of `base`'s transformer for the video and for the image."""
    model = meta_transformer(base)
    return {
        "video": count_evaluation(model, latent_shape(base, FRAMES, HEIGHT, WIDTH))[0],
        "image": count_evaluation(model, latent_shape(base, 1, HEIGHT, WIDTH))[0],
    }


def main() -> None:
    flops = {base: per_evaluation(base) for base in ("wan22_5b", "wan22_14b")}
    after = load_profile("production").render
    rows = [
        ("before: foundation, TI2V-5B 30 steps x CFG", "wan22_5b", 30 * 2),
        ("seed: A14B 30 steps x CFG", "wan22_14b", 30 * 2),
        ("seed: A14B + lightx2v 4 steps", "wan22_14b", 4),
        (f"after: production, A14B + lightx2v {after.steps} steps", "wan22_14b", after.steps),
    ]
    print(f"one evaluation at {WIDTH}x{HEIGHT}: "
          + "; ".join(f"{base} video {v['video'] / 1e12:.0f} TFLOP, image {v['image'] / 1e12:.1f} TFLOP"
                      for base, v in flops.items()))  # fmt: skip
    print(f"{'render':<48} {'evals':>5} {'video PFLOP':>12} {'image TFLOP':>12}")
    for label, base, evaluations in rows:
        video, image = evaluations * flops[base]["video"], evaluations * flops[base]["image"]
        print(f"{label:<48} {evaluations:>5} {video / 1e15:>12.1f} {image / 1e12:>12.1f}")
    before, now = 60 * flops["wan22_5b"]["video"], after.steps * flops["wan22_14b"]["video"]
    ratio = flops["wan22_14b"]["video"] / flops["wan22_5b"]["video"]
    print(f"after / before, video: {now / before:.2f}: an A14B evaluation is {ratio:.0f}x a 5B one (2.9x the "
          "parameters on 4x the tokens: the 5B's VAE compresses 16x), and there are 15x fewer")  # fmt: skip
    seed = 60 * flops["wan22_14b"]["video"]
    print(f"after / the seed's 30-step A14B: {now / seed:.3f}")


if __name__ == "__main__":
    main()

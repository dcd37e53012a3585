"""Steps per second of our trainer on the tiny models (CPU), and what caching latents and text embeddings saves.

    .venv/bin/python bench/train_step.py [--steps 60]

Prints the median seconds of a training step with the cached latents and embeddings (as the trainer runs), and of
the same step with the image encoded by the VAE and the caption by UMT5 each time (as a trainer without the cache
would), and their ratio. Figures, not a test: the machine's load moves them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from likeness.models.pipelines import get_pipeline
from likeness.models.profiles import load_profile
from likeness.training.data import read_training_folder
from likeness.training.native import Trainer, cache_examples
from likeness.training.spec import TrainJob


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    profile = load_profile("tiny")
    config = profile.train.model_copy(update={"steps": args.steps, "checkpoint_every": args.steps})
    job = TrainJob(name="B", trigger="B", config=config, model=profile.models["video"], dtype="float32", device="cpu")
    pipe = get_pipeline("video", profile)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"B_{i}.png")
            (folder / f"B_{i}.txt").write_text(f"B, a photo number {i}")
        images = read_training_folder(folder)
        times: list[float] = []
        started = time.perf_counter()
        Trainer(job, pipe, images, folder / "out").train(on_step=lambda *_: times.append(time.perf_counter()))
        steps = np.diff(times)
        cached = statistics.median(steps)
        print(f"tiny trainer: {args.steps} steps in {times[-1] - started:.2f} s wall (with caching and samples)")
        print(f"  a cached step: median {cached * 1000:.1f} ms ({1 / cached:.1f} steps/s)")
        encode = []
        for _ in range(20):
            begin = time.perf_counter()
            with torch.no_grad():
                cache_examples(pipe, images[:1], job.config.resolutions, 16, masks=False)
            encode.append(time.perf_counter() - begin)
        extra = statistics.median(encode)
        print(f"  VAE + UMT5 for one image and caption: median {extra * 1000:.1f} ms")
        print(f"  a step without the cache would take {(cached + extra) * 1000:.1f} ms: the cache saves "
              f"{extra / (cached + extra):.0%} of it")  # fmt: skip


if __name__ == "__main__":
    main()

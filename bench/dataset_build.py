"""Time and peak memory of a tiny dataset build with the whole default catalogue, and what curation did.

    .venv/bin/python bench/dataset_build.py

Runs `likeness dataset` as a user types it, in a fresh folder, against a running `prefect server start`,
with the tiny profile and every entry of the default catalogue (plus one garment and one pose image),
upscaled to a 2048 px long side and refined in 512 px tiles. Peak RSS is the CLI process's (the flow runs in
it; models load there). Figures vary with machine load.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.prefect_server import prefect_server  # noqa: E402

LIKENESS = str(Path(sys.executable).parent / "likeness")
PEAK_OF_CHILD = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, prefect_server(Path(tmp) / "prefect-server") as api:
        cwd = Path(tmp)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", cwd / "grace.jpg")
        # A plain garment and pose picture are enough to run the try-on and pose-transfer entries.
        rng = np.random.default_rng(0)
        for name in ("garment", "pose"):
            Image.fromarray(rng.integers(0, 255, (512, 384, 3), dtype=np.uint8)).save(cwd / f"{name}.png")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
        env.update(
            PREFECT_HOME=str(cwd / "prefect-home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false"
        )
        # Build the tiny models first, so the figure is the dataset build's.
        subprocess.run(
            [sys.executable, "-c", "from likeness.models.tiny import build_tiny_models; from likeness.settings import "
             "get_settings; build_tiny_models(get_settings().resolved_models_dir / 'tiny')"],
            cwd=cwd, env=env, check=True,
        )  # fmt: skip
        command = [
            LIKENESS, "dataset", "Grace Hopper", "--image", "grace.jpg", "--garment", "garment.png",
            "--pose", "pose.png", "--profile", "tiny", "--out", "out", "--beyond-limits",
            "--set", "dataset.variations=null", "--set", "dataset.upscale.size=2048",
            # Production's refine tiling (the tiny profile's 64 px tiles suit its 128 px images, not 2048 px).
            "--set", "dataset.upscale.tile=512", "--set", "dataset.upscale.overlap=64",
        ]  # fmt: skip
        started = time.perf_counter()
        # A wrapper process whose only child is the CLI, so the peak is the dataset build's alone.
        measured = subprocess.run(
            [sys.executable, "-c", PEAK_OF_CHILD, *command],
            cwd=cwd,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        peak_mib = int(measured.stdout.split()[-1]) / 1024
        record = json.loads((cwd / "out" / "likeness.json").read_text())
        lines = [json.loads(line) for line in (cwd / "out" / "dataset_manifest.jsonl").read_text().splitlines()]
    kept = [line for line in lines if line["kept"]]
    refused = sum(len(line["rejected"]) for line in lines)
    print(f"tiny dataset build, whole default catalogue, 2048 px: {wall:.1f} s wall, peak RSS {peak_mib:.0f} MiB")
    print(f"  {len(kept)} images kept, {refused} tries refused, {len(lines) - len(kept)} shots dropped")
    print(f"  model loads: {record['last_run']['model_loads']}")


if __name__ == "__main__":
    main()

"""What a run writes against what the free-space check asks for: tiny measured, production computed.

    .venv/bin/python bench/write_estimate.py

Runs `likeness produce` on the tiny profile (about 1.5 minutes on 2 cores) into a fresh data folder, sums the bytes
of the output folder and of the artifact store (its objects and their sidecars), and prints them beside
`estimate_run_bytes` with its headroom; then the production profile's estimate for the default catalogue.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from likeness.config import RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.models.profiles import load_profile
from likeness.run.write_checks import WAN_CONFIGS, estimate_run_bytes, headroom
from likeness.settings import get_settings

LIKENESS = str(Path(sys.executable).parent / "likeness")
MB = 1024 * 1024


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def estimate(profile_name: str, transformer: dict, reference_bytes: int) -> tuple[int, int]:
    profile = load_profile(profile_name)
    config = RunConfig.from_profile(profile, {})
    shots = len(load_catalogue().shots(config.dataset.variations))
    return estimate_run_bytes(config, transformer, shots, reference_bytes)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "LIKENESS_DATA_DIR": str(root / "data"), "HF_HUB_OFFLINE": "1"}
        env.pop("PREFECT_API_URL", None)
        subprocess.run([LIKENESS, "sample-photo", str(root / "ada.jpg")], env=env, check=True, capture_output=True)
        out = root / "out"
        command = [LIKENESS, "produce", "Ada", "--image", str(root / "ada.jpg"), "--profile", "tiny", "--out", str(out)]
        subprocess.run(command, env=env, check=True, capture_output=True)
        written_out, written_store = folder_bytes(out), folder_bytes(root / "data" / "store")
        os.environ["LIKENESS_DATA_DIR"] = env["LIKENESS_DATA_DIR"]
        get_settings.cache_clear()
        from likeness.run.write_checks import video_transformer_config

        transformer = video_transformer_config(load_profile("tiny"), get_settings())
        store, folder = estimate("tiny", transformer, (out / "reference.png").stat().st_size)
    asked = store + folder + headroom(store + folder)
    print("tiny profile, default catalogue (output folder and store on one filesystem)")
    print(f"  written:  output folder {written_out / MB:.2f} MB, store {written_store / MB:.2f} MB")
    print(f"  estimate: output folder {folder / MB:.2f} MB, store {store / MB:.2f} MB")
    print(f"  asked for, with headroom: {asked / MB:.2f} MB")
    print(f"  asked / written: {asked / (written_out + written_store):.2f}")
    production = load_profile("production")
    store, folder = estimate("production", WAN_CONFIGS[production.train.base], 3 * MB)
    print("production profile, default catalogue, a 3 MB reference PNG (computed)")
    print(
        f"  estimate: output folder {folder / MB:.0f} MB, store {store / MB:.0f} MB, "
        f"asked with headroom {(store + folder + headroom(store + folder)) / MB:.0f} MB"
    )


if __name__ == "__main__":
    main()

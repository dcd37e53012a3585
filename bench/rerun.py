"""How long a re-run takes when nothing changed ("up to date") and when one output file is missing
(the cached path: Prefect starts, every task is a cache hit, the export puts the file back).

    .venv/bin/python bench/rerun.py [--repeats 5]

Both are `likeness produce` as a user types it, on the tiny profile, after one first run in a
fresh folder, with Prefect's temporary server (no PREFECT_API_URL), as a new user has it.
Prints the median, minimum and maximum wall time of each over the repeats, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

LIKENESS = str(Path(sys.executable).parent / "likeness")
ARGS = ["produce", "Grace Hopper", "--image", "grace.jpg", "--profile", "tiny", "--out", "out"]


def timed(cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([LIKENESS, *ARGS], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        shutil.copyfile(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", cwd / "grace.jpg")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
        env["PREFECT_HOME"] = str(cwd / "prefect-home")
        first, _ = timed(cwd, env)
        up_to_date, cached = [], []
        for _ in range(repeats):
            seconds, stderr = timed(cwd, env)
            assert "up to date" in stderr, stderr
            up_to_date.append(seconds)
            (cwd / "out" / "dataset_contact_sheet.png").unlink()
            seconds, stderr = timed(cwd, env)
            assert "up to date" not in stderr, stderr
            cached.append(seconds)
    print(f"first run: {first:.1f} s (builds the tiny models, runs every stage)")
    print(f"{'re-run':<44}{'median s':>9}{'min':>7}{'max':>7}")
    for name, times in (("unchanged: up to date, no Prefect", up_to_date), ("one output missing: cached path", cached)):
        print(f"{name:<44}{statistics.median(times):>9.2f}{min(times):>7.2f}{max(times):>7.2f}")
    print(f"up to date / cached: {statistics.median(up_to_date) / statistics.median(cached):.3f} ({repeats} repeats)")


if __name__ == "__main__":
    main()

"""Seconds from Ctrl-C (SIGINT to the process group) or SIGTERM to the exit of `likeness produce`,
in the dataset stage and in training, and whether the temporary Prefect server is gone with it.

    .venv/bin/python bench/interrupt.py [--repeats 3]

Each try is a fresh `likeness produce` on the tiny profile (training set to 3000 steps so it is
still running when the signal comes), without PREFECT_API_URL, as a new user runs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.prefect_server import likeness_server_pids  # noqa: E402

LIKENESS = str(Path(sys.executable).parent / "likeness")
SAMPLE_PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
ARGS = ["produce", "Grace Hopper", "--image", "grace.jpg", "--out", "out", "--set", "train.steps=3000"]


def one_try(cwd: Path, env: dict[str, str], stage: str, signum: int) -> tuple[float, int, bool]:
    process = subprocess.Popen(
        [LIKENESS, *ARGS, "--beyond-limits"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith(f"{stage} 0/"):
            break
    time.sleep(1.0)
    assert likeness_server_pids(process.pid), "no temporary Prefect server"
    sent = time.perf_counter()
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    code = process.wait()
    seconds = time.perf_counter() - sent
    time.sleep(1.0)
    return seconds, code, not likeness_server_pids(process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    print(f"{'signal':<8}{'stage':<9}{'median s':>9}{'max s':>7}  exit codes  server gone")
    for signum, stage in ((signal.SIGINT, "train"), (signal.SIGINT, "dataset"), (signal.SIGTERM, "train")):
        results = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cwd = Path(tmp)
                shutil.copyfile(SAMPLE_PHOTO, cwd / "grace.jpg")
                env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
                env["PREFECT_HOME"] = str(cwd / "prefect-home")
                results.append(one_try(cwd, env, stage, signum))
        times = [seconds for seconds, _, _ in results]
        codes = sorted({code for _, code, _ in results})
        gone = all(gone for _, _, gone in results)
        name = signal.Signals(signum).name
        print(f"{name:<8}{stage:<9}{statistics.median(times):>9.2f}{max(times):>7.2f}  {codes}  {gone}")


if __name__ == "__main__":
    main()

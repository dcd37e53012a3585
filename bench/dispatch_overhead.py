"""The fixed cost of running through deployments: a fully cached produce run dispatched stage by stage to
process workers, against the same run inline in one process, and what one dispatched stage adds.

    .venv/bin/python bench/dispatch_overhead.py [--repeats 3]

One Prefect server, a CPU and a GPU process worker (`PREFECT_WORKER_QUERY_SECONDS=1`), a local store
shared by all (one machine), the tiny profile with two shots. After a first run fills the cache, each
repeat times, as a user types them:
- inline: `likeness produce` into a fresh output folder (every stage a cache hit, then the export);
- dispatched: `likeness run produce ... --watch --out <fresh folder>` (the parent on the CPU worker, each
  stage a run of its deployment on the GPU worker, every task a cache hit, then the same export);
- one stage: `likeness run dataset ... --watch`, the dataset stage alone through its deployment.
Prints medians, minimum and maximum, and the dispatched / inline ratio.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.prefect_server import prefect_server, quiet_prefect_env  # noqa: E402

BIN = Path(sys.executable).parent
SMALL = ["-p", "profile=tiny", "-p", "overrides.dataset.variations=[front,face]"]


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp, prefect_server(Path(tmp) / "server") as api:
        cwd = Path(tmp)
        photo = cwd / "ada.jpg"
        shutil.copyfile(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", photo)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
        env.update(quiet_prefect_env(cwd / "prefect-home"))
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        env.update(PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="1", LIKENESS_DATA_DIR=str(cwd / "data"))
        subprocess.run([str(BIN / "likeness"), "deploy"], cwd=cwd, env=env, check=True, capture_output=True)
        workers = [
            subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", pool, *extra],
                cwd=cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for pool, extra in (("likeness-cpu", []), ("likeness-gpu", ["--limit", "1"]))
        ]
        try:
            dispatched_args = ["run", "produce", "-p", "name=Ada", "-p", f"reference={photo}", *SMALL, "--watch"]
            inline_args = ["produce", "Ada", "--image", str(photo), "--profile", "tiny"]
            inline_args += ["--set", "dataset.variations=[front,face]"]
            stage_args = ["run", "dataset", "-p", "name=Ada", "-p", f"reference={photo}", *SMALL, "--watch"]
            first = timed([str(BIN / "likeness"), *dispatched_args, "--out", "first"], cwd, env)
            times: dict[str, list[float]] = {"inline": [], "dispatched": [], "one stage": []}
            for n in range(repeats):
                times["inline"].append(timed([str(BIN / "likeness"), *inline_args, "--out", f"in-{n}"], cwd, env))
                out = ["--out", f"out-{n}"]
                times["dispatched"].append(timed([str(BIN / "likeness"), *dispatched_args, *out], cwd, env))
                times["one stage"].append(timed([str(BIN / "likeness"), *stage_args], cwd, env))
        finally:
            for worker in workers:
                for _ in range(2):  # a worker ends on the second signal
                    if worker.poll() is None:
                        os.killpg(worker.pid, signal.SIGINT)
                        time.sleep(1)
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    print(f"first dispatched run: {first:.1f} s (fills the cache)")
    print(f"{'fully cached produce, tiny, 2 shots':<44}{'median s':>9}{'min':>7}{'max':>7}")
    for name, values in times.items():
        print(f"{name:<44}{statistics.median(values):>9.2f}{min(values):>7.2f}{max(values):>7.2f}")
    extra = statistics.median(times["dispatched"]) - statistics.median(times["inline"])
    print(f"dispatched / inline: {statistics.median(times['dispatched']) / statistics.median(times['inline']):.2f}")
    print(f"added by dispatching: {extra:.1f} s for the parent and its 3 stage runs ({repeats} repeats)")


if __name__ == "__main__":
    main()

"""Ctrl-C, SIGTERM and SIGKILL against the real `likeness produce` process, at different stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.prefect_server import likeness_server_pids

# Each runs the real CLI end to end (tens of seconds): `bin/test -m 'not slow'` skips them.
pytestmark = pytest.mark.slow

LIKENESS = str(Path(sys.executable).parent / "likeness")


class RunningCli:
    """`likeness produce` in its own process group, as a terminal runs it; stderr is read as it comes."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            [LIKENESS, "produce", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, f"exited {self.process.returncode}: {''.join(self.lines)[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in: {''.join(self.lines)[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def servers_gone_within(cli_pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while likeness_server_pids(cli_pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def own_server_env(tmp_path, models_dir):
    """No PREFECT_API_URL: the CLI starts its own temporary Prefect server, as for a new user."""
    return cli_env(tmp_path, models_dir, api=None)


@pytest.mark.parametrize(
    ("signum", "stage", "code"),
    [(signal.SIGINT, "train", 130), (signal.SIGTERM, "dataset", 143)],
    ids=["ctrl-c-in-training", "sigterm-in-dataset"],
)
def test_a_signal_stops_the_run_within_seconds_and_a_rerun_resumes(
    tmp_path, own_server_env, face_photo, signum, stage, code
):
    args = ["Grace Hopper", "--image", str(face_photo), "--out", "out", "--set", "train.steps=3000"]
    if stage == "train":
        # The dataset only has to be done before training starts: one shot is as done as the tiny profile's seven.
        args += ["--set", "dataset.variations=[front]"]
    cli = RunningCli(tmp_path, own_server_env, *args, "--beyond-limits")
    cli.wait_for(f"{stage} 0/")
    assert len(likeness_server_pids(cli.process.pid)) == 1
    time.sleep(1.0)
    sent = time.monotonic()
    # A terminal's Ctrl-C goes to the whole foreground process group; SIGTERM comes from `kill PID`.
    if signum == signal.SIGINT:
        os.killpg(cli.process.pid, signum)
    else:
        cli.process.send_signal(signum)
    assert cli.finish(timeout=30) == code, cli.stderr[-3000:]
    took = time.monotonic() - sent
    assert took < 10, f"took {took:.1f} s to stop"
    assert f"interrupted ({signal.Signals(signum).name}) during {stage}" in cli.stderr
    assert "run the same command again to resume" in cli.stderr
    assert "Traceback" not in cli.stderr
    assert servers_gone_within(cli.process.pid, 5), "the temporary Prefect server outlived the CLI"
    assert not list((tmp_path / "out").rglob(".*.likeness-part"))

    if stage == "train":
        rerun = subprocess.run(
            [LIKENESS, "produce", *args, "--beyond-limits", "--set", "train.steps=6"],
            cwd=tmp_path,
            env=own_server_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        record = json.loads((tmp_path / "out" / "likeness.json").read_text())
        # The dataset finished before the interrupt: only the video model loads again.
        assert record["last_run"]["model_loads"] == {"video": 1}


def test_the_temporary_server_dies_with_a_killed_cli(tmp_path, own_server_env, face_photo):
    cli = RunningCli(tmp_path, own_server_env, "Grace Hopper", "--image", str(face_photo), "--out", "out")
    cli.wait_for("dataset 0/")
    assert len(likeness_server_pids(cli.process.pid)) == 1
    cli.process.kill()
    cli.finish(timeout=10)
    assert servers_gone_within(cli.process.pid, 3), "the temporary Prefect server outlived a SIGKILLed CLI"

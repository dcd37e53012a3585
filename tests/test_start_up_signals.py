"""Ctrl-C and SIGTERM are honoured from the CLI's first instant, before its libraries are even imported."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env

LIKENESS = str(Path(sys.executable).parent / "likeness")
SIGNAL_ITSELF = """
import os, signal, sys, time
from likeness.run.interrupts import stop_on_signal_at_start_up
stop_on_signal_at_start_up()
os.kill(os.getpid(), signal.{name})
time.sleep(30)
"""


def test_the_command_line_takes_the_signals_before_importing_its_libraries():
    check = "import sys, likeness.cli; print(sorted({'typer', 'torch', 'prefect', 'PIL', 'rich'} & set(sys.modules)))"
    answer = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_at_start_up_ends_the_process_at_once_saying_so(name, code):
    started = time.monotonic()
    answer = subprocess.run(
        [sys.executable, "-c", SIGNAL_ITSELF.format(name=name)], capture_output=True, text=True, timeout=30
    )
    assert answer.returncode == code
    assert f"interrupted ({name}) before any work started" in answer.stderr
    assert time.monotonic() - started < 20, "it slept instead of ending"


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.3, 1.0, 2.0, 3.5])
def test_ctrl_c_at_any_instant_of_a_real_start_up_ends_the_cli_within_seconds(
    after_s, tmp_path, models_dir, face_photo
):
    env = cli_env(tmp_path, models_dir, api=None)
    cli = subprocess.Popen(
        [LIKENESS, "dataset", "Ada", "--image", str(face_photo), "--profile", "tiny", "--out", str(tmp_path / "ada")],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(after_s)
    cli.send_signal(signal.SIGINT)
    signalled = time.monotonic()
    _, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 130, stderr
    assert "interrupted (SIGINT)" in stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - signalled < 15, f"worked on after Ctrl-C: {stderr}"

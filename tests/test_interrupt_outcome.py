"""However a run unwinds after Ctrl-C, the CLI ends with 128 + the signal and says what was interrupted."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RUN = """
import os, signal, sys, time
from pathlib import Path
import typer
from likeness.cli.flow_run import FlowRun
from likeness.settings import Settings


def interrupted_here():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)


class Run(FlowRun):
{body}


settings = Settings(data_dir=Path({data!r}))
try:
    Run("Ada", Path({data!r}) / "out", {{}}, "key", None, settings).start(refresh=False, verbose=False)
except typer.Exit as end:  # as the typer app ends it
    sys.exit(end.exit_code)
"""

# Prefect catches the interrupt in the flow's engine and hands back the run's Crashed state.
ENDS_CRASHED = """
    def _run(self, verbose):
        self._result()

    def _flow_state(self):
        from prefect.states import Crashed
        try:
            interrupted_here()
        except KeyboardInterrupt:
            return Crashed(message="Execution was aborted by an interrupt signal.")
"""

# A library's clean-up raises its own error while the interrupt unwinds it.
ENDS_WITH_A_CUT_CONNECTION = """
    def _run(self, verbose):
        try:
            interrupted_here()
        except KeyboardInterrupt:
            raise ConnectionResetError(104, "Connection reset by peer")
"""

NO_SIGNAL_CUT_CONNECTION = """
    def _run(self, verbose):
        raise ConnectionResetError(104, "Connection reset by peer")
"""


def run(body: str, tmp_path) -> subprocess.CompletedProcess[str]:
    script = RUN.format(body=textwrap.indent(textwrap.dedent(body), "    "), data=str(tmp_path))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body", [ENDS_CRASHED, ENDS_WITH_A_CUT_CONNECTION], ids=["crashed-state", "cut-connection"])
def test_a_run_that_unwinds_its_own_way_after_ctrl_c_ends_as_interrupted(body, tmp_path):
    answer = run(body, tmp_path)
    assert answer.returncode == 130, answer.stderr
    assert "interrupted (SIGINT) during start-up" in answer.stderr
    assert "error:" not in answer.stderr
    assert "Traceback" not in answer.stderr


def test_the_same_error_without_a_signal_is_a_failure_naming_it(tmp_path):
    answer = run(NO_SIGNAL_CUT_CONNECTION, tmp_path)
    assert answer.returncode == 2, answer.stderr
    assert "error:" in answer.stderr
    assert "Connection reset by peer" in answer.stderr
    assert "interrupted" not in answer.stderr

"""However a run unwinds after a signal, the CLI ends with 128 + the signal and says what was interrupted; a signal
that a library's own handler takes first (Prefect's flow engine owns SIGTERM while a flow runs) still stops the
run's model work at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import cli_env

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


# A real Prefect flow whose task polls the stop flag, as model work does between steps; SIGTERM arrives while it works.
TERMINATED_WHILE_A_TASK_WORKS = """
import contextlib, os, signal, sys, threading, time
from prefect import flow, task
from likeness.run.interrupts import Interrupted, StageStopped, check_stop, exit_now, interruptible, stop_flag_on_signals

started = threading.Event()


@task
def work_until_stopped():
    started.set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            check_stop()
        except StageStopped:
            print("the task saw the stop flag", file=sys.stderr)
            raise
        time.sleep(0.02)
    print("the task was never stopped", file=sys.stderr)


@flow
def stage():
    with {stage_arms}:
        work_until_stopped.submit().wait()


def terminate_once_started():
    started.wait(60)
    time.sleep(0.3)
    os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=terminate_once_started, daemon=True).start()
with {process_arms}:
    try:
        stage()
    except Interrupted as interrupt:
        exit_now(interrupt.exit_code, lambda: print(f"interrupted ({{interrupt}})", file=sys.stderr))
"""
AS_THE_CLI_RUNS_IT = "interruptible(on_forced_exit=lambda interrupt: print('forced exit', file=sys.stderr), grace_s=60)"


def terminated_while_a_task_works(
    tmp_path, models_dir, api: str, process_arms: str, stage_arms: str
) -> subprocess.CompletedProcess[str]:
    script = TERMINATED_WHILE_A_TASK_WORKS.format(process_arms=process_arms, stage_arms=stage_arms)
    env = cli_env(tmp_path, models_dir, api=api)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)


def test_sigterm_taken_by_prefects_flow_engine_still_raises_the_stop_flag_at_once(tmp_path, models_dir, prefect_api):
    # The stage's own arming is there too, as in build_dataset, and adds nothing inside the CLI's.
    answer = terminated_while_a_task_works(
        tmp_path, models_dir, prefect_api, AS_THE_CLI_RUNS_IT, "stop_flag_on_signals()"
    )
    assert answer.returncode == 143, answer.stderr[-3000:]
    assert "the task saw the stop flag" in answer.stderr
    assert "the task was never stopped" not in answer.stderr
    # Prefect unwound the flow and handed the signal back: the run ended through our handler, not the forced exit.
    assert "interrupted (SIGTERM)" in answer.stderr
    assert "forced exit" not in answer.stderr


def test_a_deployment_run_ended_by_its_worker_stops_the_stage_threads_at_their_next_step(
    tmp_path, models_dir, prefect_api
):
    # No CLI around it: a worker's flow run process, which the worker cancels with SIGTERM.
    answer = terminated_while_a_task_works(
        tmp_path, models_dir, prefect_api, "contextlib.nullcontext()", "stop_flag_on_signals()"
    )
    assert "the task saw the stop flag" in answer.stderr, answer.stderr[-3000:]
    assert "the task was never stopped" not in answer.stderr
    # Prefect hands the signal back to the default handler once the flow has unwound.
    assert answer.returncode == -signal.SIGTERM, answer.stderr[-3000:]


# Prefect's flow engine raises from its SIGTERM handler, which leaves the stage's block at once, before the threads
# the engine then waits for have looked at the flag.
LEFT_BY_THE_SIGNAL = """
import os, signal, sys
from likeness.run.interrupts import StageStopped, check_stop, clear_stop, stop_flag_on_signals


class Terminated(Exception):
    pass


def raise_terminated(signum, frame):
    raise Terminated


signal.signal(signal.SIGTERM, raise_terminated)
for attempt in range(20):
    clear_stop()
    try:
        with stop_flag_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
    except Terminated:
        pass
    try:
        check_stop()
    except StageStopped:
        continue
    sys.exit(f"attempt {attempt}: the flag was down once the signal had left the block")
with stop_flag_on_signals():
    pass
try:
    check_stop()
except StageStopped:
    sys.exit("a block left without a signal left the flag up")
print("ok")
"""


def test_the_stop_flag_stays_up_once_a_signal_has_left_the_stages_block():
    answer = subprocess.run([sys.executable, "-c", LEFT_BY_THE_SIGNAL], capture_output=True, text=True, timeout=60)
    assert answer.stdout.strip() == "ok", answer.stderr

"""Ctrl-C and SIGTERM stop a run within seconds, whatever it is doing.

The first signal raises `Interrupted` in the main thread, so the run unwinds: Prefect marks its
runs crashed, temporary files are removed, the CLI says what was interrupted. Model work that a
stage runs in a worker thread cannot receive a signal, so it polls `check_stop` between steps
(`stop_between_steps` for diffusers pipelines) and ends with `StageStopped`; the flag they read
lives in `likeness.stop` (re-exported here), this module raises it on a signal. The CLI leaves
through `exit_now`, so no thread can hold the interpreter's exit; if unwinding itself hangs (a
server that no longer answers), the process exits anyway after `grace_s`, and a second signal
exits at once. Before a run's own handling is in place (the CLI reading its inputs, importing its
libraries), `stop_on_signal_at_start_up` ends the process at once: nothing has started to unwind.

A library may put its own handler in place of ours: Prefect's flow engine owns SIGTERM while a flow runs, unwinds
the flow (waiting for its task threads to finish what they are doing) and only then hands the signal back. So the
stop flag and the forced exit do not wait for our handler: a watcher thread reads every signal from the
interpreter's wake-up pipe, which the interpreter writes to whichever handler is installed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from likeness.stop import StageStopped, check_stop, clear_stop, request_stop, stop_between_steps

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long leaving a watched block waits for the watcher to read what is left in the pipe (a forked child holding the
# pipe's write end open would keep it reading).
WATCHER_JOIN_S = 1.0

__all__ = [
    "SIGNALS",
    "Interrupted",
    "StageStopped",
    "check_stop",
    "exit_now",
    "interruptible",
    "stop_between_steps",
    "stop_flag_on_signals",
    "stop_on_signal_at_start_up",
]

# How many `_watching_signals` blocks are open: the interpreter has one wake-up pipe, so only the outermost sets it.
_watchers = 0


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


def exit_now(code: int, before: Callable[[], None] | None = None) -> None:
    """Leave the process with `code` without waiting for worker threads still busy with a model."""
    try:
        if before:
            before()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def stop_on_signal_at_start_up() -> None:
    """From now on SIGINT and SIGTERM end the process at once (128 + the signal), saying so on stderr.

    A command calls it first thing; `interruptible` takes over while a run works and gives the signals back after.
    """

    def handle(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        exit_now(128 + signum, lambda: print(f"interrupted ({name}) before any work started", file=sys.stderr))

    for signum in SIGNALS:
        signal.signal(signum, handle)


@contextmanager
def interruptible(on_forced_exit: Callable[[Interrupted], None], grace_s: float = 5.0) -> Iterator[list[Interrupted]]:
    """Within this block SIGINT and SIGTERM raise `Interrupted`; `on_forced_exit` runs before a forced exit.

    Yields the signals received so far (none or one): code that Prefect or a library unwinds its own way (a run
    that ends Crashed rather than raising) can still tell it was interrupted. Handle `Interrupted` inside the
    block: leaving it disarms the forced exit.
    """
    received: list[Interrupted] = []
    timers: list[threading.Timer] = []
    handled: list[int] = []
    lock = threading.Lock()

    def force(interrupt: Interrupted) -> None:
        exit_now(interrupt.exit_code, lambda: on_forced_exit(interrupt))

    def begin_stopping(signum: int) -> Interrupted:
        """The first signal raises the stop flag and arms the forced exit; later ones change nothing here."""
        with lock:
            if received:
                return received[0]
            interrupt = Interrupted(signum)
            received.append(interrupt)
        request_stop()
        timer = threading.Timer(grace_s, force, args=(interrupt,))
        timer.daemon = True
        timer.start()
        timers.append(timer)
        return interrupt

    def handle(signum: int, frame: object) -> None:
        handled.append(signum)
        interrupt = begin_stopping(signum)
        if len(handled) > 1:
            force(interrupt)
        raise interrupt

    previous = {signum: signal.signal(signum, handle) for signum in SIGNALS}
    try:
        with _watching_signals(begin_stopping):
            yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for timer in timers:
            timer.cancel()
        clear_stop()


@contextmanager
def stop_flag_on_signals() -> Iterator[None]:
    """Within this block SIGINT and SIGTERM raise the stop flag at once, whoever handles them.

    For a stage whose model work runs in worker threads when no CLI runs it: a deployment's flow run that its
    Prefect worker ends with SIGTERM (a cancel from the UI). Prefect's flow engine takes that signal and then waits
    for the stage's threads; with the flag raised they stop at their next step, rather than finish their image while
    the worker counts down to SIGKILL. Inside `interruptible` (the CLI's runs), or off the main thread, it adds
    nothing.
    """
    if _watchers or threading.current_thread() is not threading.main_thread():
        yield
        return
    signalled: list[int] = []

    def stop(signum: int) -> None:
        signalled.append(signum)
        request_stop()

    try:
        with _watching_signals(stop):
            yield
    finally:
        # After a signal the flag stays up: Prefect leaves this block at once and then waits for the stage's threads.
        if not signalled:
            clear_stop()


@contextmanager
def _watching_signals(on_signal: Callable[[int], object]) -> Iterator[None]:
    """Call `on_signal` from a thread of its own for every SIGINT and SIGTERM, whoever's handler runs for it."""
    global _watchers
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # the interpreter's signal handler must never block on it
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        try:
            while chunk := os.read(read_end, 64):
                for signum in chunk:
                    if signum in SIGNALS:
                        on_signal(signum)
        finally:
            os.close(read_end)

    watcher = threading.Thread(target=watch, name="signal watcher", daemon=True)
    watcher.start()
    _watchers += 1
    try:
        yield
    finally:
        _watchers -= 1
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watcher reads the end of the pipe and stops
        # A signal that ended the block is in the pipe: it is seen before the block's caller goes on.
        watcher.join(timeout=WATCHER_JOIN_S)

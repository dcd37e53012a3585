"""Where a CLI run's logs go: every record into a log file, to the console only with `--verbose`.

Prefect, diffusers, transformers and urllib3 log to the console by default, so a failed run
printed sixty lines of tracebacks and an S3 outage two dozen retry warnings. Without
`--verbose` the console keeps the progress bars and one line per problem; the details are in
the run's log file, whose path a failure names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
RETRY_EPISODE_S = 30.0


def log_file_path(data_dir: Path, trigger: str) -> Path:
    """A new log file for one run of `trigger`, under the data folder's `logs/`."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return data_dir.resolve() / "logs" / f"{stamp}-{trigger}.log"


class RetryNotice(logging.Handler):
    """Turns urllib3's retry warnings into one console line per outage, however many retries it takes."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._notify = notify
        self._last_retry = -RETRY_EPISODE_S

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("Retrying"):
            return
        now = time.monotonic()
        if now - self._last_retry > RETRY_EPISODE_S:
            self._notify("a server (the S3 store?) is not answering; retrying, details in the log file")
        self._last_retry = now


class ConsoleNotice(logging.Handler):
    """One console line per warning, without the logger's name and level."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._notify = notify

    def emit(self, record: logging.LogRecord) -> None:
        self._notify(record.getMessage())


def route_logs(path: Path, verbose: bool, notify: Callable[[str], None]) -> None:
    """Send every logger's records to `path`; keep console handlers only when `verbose`.

    Call after Prefect is imported: it installs its console handlers on import.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    for logger in [root, *logging.Logger.manager.loggerDict.values()]:
        if not isinstance(logger, logging.Logger):
            continue
        consoles = [handler for handler in logger.handlers if _writes_to_console(handler)]
        if not verbose:
            for handler in consoles:
                logger.removeHandler(handler)
        if consoles and not logger.propagate:
            logger.addHandler(to_file)
    logging.captureWarnings(True)
    if not verbose:
        logging.getLogger("urllib3.connectionpool").addHandler(RetryNotice(notify))
        # Likeness' own warnings are written for people (a corrupt artifact moved aside, say).
        logging.getLogger("likeness").addHandler(ConsoleNotice(notify))


def _writes_to_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and getattr(stream, "name", "") in ("<stderr>", "<stdout>")

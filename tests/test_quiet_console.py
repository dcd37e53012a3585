"""Without --verbose the console shows one line per problem; the log file keeps every record."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from likeness.run.prefect_server import free_port

OUTAGE = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from likeness.run.runlog import route_logs
    from likeness.storage.s3 import S3Store
    from likeness.storage.store import StoreError

    lines = []
    route_logs(Path(sys.argv[1]), verbose=False, notify=lines.append)
    store = S3Store(f"http://127.0.0.1:{sys.argv[2]}", "key", "secret", "bucket", create_bucket=False)
    try:
        store.exists("sha256/ab/front.png")
    except StoreError as error:
        print("store error:", error)
    logging.getLogger("likeness.storage.caching").warning("object 'x' is missing: running the stage again")
    for line in lines:
        print("notice:", line)
    """
)


def test_an_s3_outage_is_one_console_line_and_every_retry_is_in_the_log(tmp_path: Path):
    log = tmp_path / "run.log"
    done = subprocess.run(
        [sys.executable, "-c", OUTAGE, str(log), str(free_port())], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stdout.splitlines() if line.startswith("notice:")]
    assert notices == [
        "notice: a server (the S3 store?) is not answering; retrying, details in the log file",
        "notice: object 'x' is missing: running the stage again",
    ]
    assert "cannot reach http://127.0.0.1" in done.stdout
    assert "Retrying" not in done.stderr
    assert log.read_text().count("Retrying") >= 3

"""One run per character at a time: the lease in the store refuses a second holder, outlives no dead one, and
survives its own renewals; on a local store and on S3 alike."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from likeness.run import lease
from likeness.run.lease import CharacterBusy, held, lease_key
from likeness.storage.local import LocalStore
from likeness.storage.s3 import S3Store
from likeness.storage.store import ArtifactStore, MissingObject

KEY = lease_key({"flow": "produce-character", "character": "Ada", "reference": "a" * 64})


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    server = request.getfixturevalue("s3_server")
    return S3Store(server.endpoint, server.access_key, server.secret_key, bucket=f"lease-{time.time_ns()}")


def test_the_key_follows_the_work_not_the_order_it_is_written_in():
    assert lease_key({"a": 1, "b": [2]}) == lease_key({"b": [2], "a": 1}) != lease_key({"a": 1, "b": [3]})
    assert KEY.startswith("leases/") and KEY.endswith(".json")


def test_a_second_run_is_refused_naming_the_holder_and_runs_once_the_first_has_ended(store):
    with held(store, KEY, "flow run brave-fox", "Ada"):
        busy = rf"Ada is being made by flow run brave-fox on {socket.gethostname()} \(pid {os.getpid()}\) since"
        with pytest.raises(CharacterBusy, match=busy):
            with held(store, KEY, "flow run calm-owl", "Ada"):
                pytest.fail("two runs held one character")
    with pytest.raises(MissingObject):
        store.get_bytes(KEY)
    with held(store, KEY, "flow run calm-owl", "Ada"):
        assert json.loads(store.get_bytes(KEY))["holder"] == "flow run calm-owl"


def test_a_dead_holders_lease_expires_and_is_taken_over(store):
    dead = {"token": "x", "holder": "flow run gone (killed)", "since": time.time() - 300, "expires": time.time() - 1}
    store.put_bytes(KEY, json.dumps(dead).encode())
    with held(store, KEY, "flow run next", "Ada"):
        assert json.loads(store.get_bytes(KEY))["holder"] == "flow run next"


def test_on_its_own_machine_a_lease_whose_process_is_gone_is_taken_over_at_once(store):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease_of_a_killed_cli = {
        "token": "x",
        "holder": "flow run killed",
        "host": socket.gethostname(),
        "pid": int(gone.stdout),
        "since": time.time(),
        "expires": time.time() + 100,
    }
    store.put_bytes(KEY, json.dumps(lease_of_a_killed_cli).encode())
    with held(store, KEY, "flow run next", "Ada"):
        assert json.loads(store.get_bytes(KEY))["holder"] == "flow run next"
    elsewhere = {**lease_of_a_killed_cli, "host": "another-machine"}
    store.put_bytes(KEY, json.dumps(elsewhere).encode())
    with pytest.raises(CharacterBusy, match="flow run killed on another-machine"):
        with held(store, KEY, "flow run next", "Ada"):
            pass


def test_a_working_holder_renews_its_lease_past_its_ttl(store):
    with held(store, KEY, "flow run long", "Ada", ttl_s=0.8):
        time.sleep(1.6)
        with pytest.raises(CharacterBusy, match="flow run long"):
            with held(store, KEY, "flow run late", "Ada", ttl_s=0.8):
                pass


def test_of_two_runs_taking_the_lease_at_once_exactly_one_goes_on(store):
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def run(name: str) -> None:
        start.wait()
        try:
            with held(store, KEY, name, "Ada"):
                outcomes.append(f"held by {name}")
                time.sleep(lease.SETTLE_S["s3"] * 2)
        except CharacterBusy:
            outcomes.append("refused")

    threads = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 2 and outcomes.count("refused") == 1


@pytest.mark.slow
def test_two_clis_making_the_same_character_at_once_one_runs_and_one_names_it(
    tmp_path, models_dir, prefect_api, face_photo
):
    from tests.conftest import cli_env

    env = cli_env(tmp_path, models_dir, prefect_api)
    args = [str(Path(sys.executable).parent / "likeness"), "dataset", "Ada", "--image", str(face_photo)]
    args += ["--set", "dataset.variations=[front]"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env, "cwd": tmp_path}
    runs = [subprocess.Popen([*args, "--out", str(tmp_path / out)], **pipes) for out in ("one", "two")]
    answers = [(run.wait(timeout=600), run.communicate()[1]) for run in runs]
    assert sorted(code for code, _ in answers) == [0, 2], answers
    refused = next(stderr for code, stderr in answers if code == 2)
    assert "Ada is being made by flow run" in " ".join(refused.split()), refused[-2000:]
    assert "Traceback" not in refused

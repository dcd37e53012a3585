"""A pod ends itself: the watchdog's rule on heartbeat reads, how a pod terminates itself, and what its key may do.

Fast: the rule is fed reads on a fake clock; the pods are the fake RunPod API's (local processes), running the real
agent (`python -m likeness.training.pod`) on AI Toolkit's path with a stand-in `run.py`, its presigned URLs served
by a small object server on 127.0.0.1 (no S3, no training).
"""

from __future__ import annotations

import json
import secrets
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from likeness.config import PodConfig
from likeness.models.profiles import load_profile
from likeness.runpod.pods import PodRequest, RunPodClient, RunPodKeyRejected
from likeness.storage.artifacts import ArtifactRef
from likeness.storage.s3 import S3Store
from likeness.training.heartbeat import heartbeat_every_s
from likeness.training.remote import RemoteTraining
from likeness.training.spec import TrainJob
from likeness.training.watchdog import MISSING, DriverWatch, Watchdog, can_end_itself, end_this_pod, trainer_env
from tests.fake_runpod import FakeGpu, FakeRunPod, fake_runpod

KEY = f"rp-account-{secrets.token_hex(8)}"
S3_SECRET = f"s3-secret-{secrets.token_hex(8)}"
H100 = "NVIDIA H100 80GB HBM3"


def beat(n: int, **fields: Any) -> bytes:
    return json.dumps({"pod_id": "me", "time": 1_700_000_000 + n, "beat": n, "done": False, **fields}).encode()


# The rule ---------------------------------------------------------------------------------------------------------


def test_a_heartbeat_unchanged_for_the_bound_ends_the_pod():
    watch = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=1000.0, pod_id="me")
    assert watch.observe(1000.0, beat(1)) is None
    assert watch.observe(1030.0, beat(2)) is None
    # The driver dies after beat 2: the same content, read again and again, on the pod's clock.
    for now in (1060.0, 1200.0, 1329.0):
        assert watch.observe(now, beat(2)) is None
    reason = watch.observe(1330.0, beat(2))
    assert reason is not None and "unchanged for 300 s" in reason


def test_a_changing_heartbeat_keeps_the_pod_whatever_its_clock_says():
    watch = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    # The driver's clock is a day behind, then jumps ahead: only whether the content changes counts.
    for i in range(0, 600):
        driver_time = -86_400 + i * 30 if i < 300 else 10**9 + i
        assert watch.observe(i * 30.0, beat(i, time=driver_time)) is None


def test_read_failures_are_no_evidence_the_pod_keeps_going_until_its_ttl():
    watch = DriverWatch(timeout_s=300, ttl_s=3600, started=0.0, pod_id="me")
    assert watch.observe(0.0, beat(1)) is None
    for now in range(30, 3600, 30):  # the store unreachable from the pod for the rest of the hour
        assert watch.observe(float(now), None) is None
    reason = watch.observe(3600.0, None)
    assert reason is not None and "TTL" in reason


def test_never_a_successful_read_keeps_the_pod_until_its_ttl():
    watch = DriverWatch(timeout_s=5, ttl_s=100, started=0.0)
    assert all(watch.observe(float(now), None) is None for now in range(100))
    assert "TTL" in (watch.observe(100.0, None) or "")


def test_the_bound_runs_from_the_read_that_first_showed_the_content():
    watch = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert watch.observe(0.0, beat(7)) is None
    for now in range(30, 400, 30):  # the store flakes for a while
        assert watch.observe(float(now), None) is None
    # Back, and nothing has changed since the read at 0 s: the driver is gone.
    assert "unchanged for 400 s" in (watch.observe(400.0, beat(7)) or "")
    # Whereas a new content after the same gap is a live driver.
    fresh = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    fresh.observe(0.0, beat(7))
    assert fresh.observe(400.0, beat(8)) is None
    assert fresh.observe(699.0, beat(8)) is None
    assert fresh.observe(700.0, beat(8)) is not None


def test_a_missing_heartbeat_may_not_last_the_bound_either():
    watch = DriverWatch(timeout_s=60, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert watch.observe(0.0, MISSING) is None
    assert watch.observe(59.0, MISSING) is None
    assert "no heartbeat object for 60 s" in (watch.observe(60.0, MISSING) or "")
    late = DriverWatch(timeout_s=60, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert late.observe(0.0, MISSING) is None
    assert late.observe(50.0, beat(1)) is None  # it appeared: the driver is there
    assert late.observe(109.0, beat(1)) is None


def test_a_driver_that_says_done_or_moved_on_and_a_finished_job_end_the_pod_at_once():
    watch = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert watch.observe(0.0, beat(1)) is None
    assert "job is over" in (watch.observe(1.0, beat(2, pod_id=None, done=True)) or "")
    moved = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert "moved on to pod other" in (moved.observe(1.0, beat(2, pod_id="other")) or "")
    # Before its pod exists the driver names none: that is no other pod.
    waiting = DriverWatch(timeout_s=300, ttl_s=6 * 3600, started=0.0, pod_id="me")
    assert waiting.observe(0.0, beat(0, pod_id=None)) is None
    waiting.job_over("its job is done")
    assert waiting.observe(1.0, None) == "its job is done"


def test_the_watchdog_retries_an_end_that_runpod_refused_and_stops_once_it_is_taken():
    reads = iter([beat(1), beat(1), beat(1), beat(1), beat(1)])
    clock = iter([0.0, 1.0, 2.0, 3.0, 4.0])
    asked: list[str] = []

    def end_pod(reason: str) -> bool:
        asked.append(reason)
        return len(asked) == 2  # refused once, then taken

    watch = DriverWatch(timeout_s=2, ttl_s=3600, started=0.0, pod_id="me")
    dog = Watchdog(
        watch, "http://heartbeat", 0.001, end_pod=end_pod, read=lambda url: next(reads), clock=lambda: next(clock)
    )
    dog.start().wait()
    assert len(asked) == 2 and all("unchanged" in reason for reason in asked)
    assert dog.ended == asked[-1]


def test_the_trainer_does_not_get_the_pods_key():
    env = {"RUNPOD_API_KEY": "rp-pod-x", "RUNPOD_POD_ID": "abc", "PATH": "/bin"}
    assert trainer_env(env) == {"RUNPOD_POD_ID": "abc", "PATH": "/bin"}


# What the driver hands the pod -----------------------------------------------------------------------------------


def remote_training(pod: PodConfig) -> RemoteTraining:
    # Port 9 (discard) on loopback: nothing is sent, the store only signs.
    store = S3Store(
        "http://127.0.0.1:9", "key-id", S3_SECRET, "studio", "likeness", region="us-east-1", create_bucket=False
    )
    profile = load_profile("tiny")
    job = TrainJob(
        name="Ada", trigger="Ada", config=profile.train, model=profile.models["video"], dtype="float32", device="cpu"
    )
    dataset = [("dataset/Ada_front.txt", "Ada, front view")]
    return RemoteTraining(job, "runpod-native", dataset, pod, RunPodClient(KEY), store)


def test_the_manifest_gives_the_pod_its_heartbeat_to_read_and_its_bound_expiring_with_its_ttl():
    pod = PodConfig(ttl_hours=0.5, driver_timeout_s=120)
    training = remote_training(pod)
    watchdog = training.manifest(attempt=0)["watchdog"]
    url = urlsplit(watchdog["heartbeat"])
    assert unquote(url.path) == f"/studio/likeness/{training.prefix}heartbeat.json"
    assert parse_qs(url.query)["X-Amz-Expires"] == ["1800"]
    assert watchdog["driver_timeout_s"] == 120 and watchdog["ttl_s"] == 1800
    # The driver beats, and the pod looks, well inside the bound.
    assert watchdog["check_every_s"] == heartbeat_every_s(pod) == 12
    assert heartbeat_every_s(PodConfig()) == 30 and PodConfig().driver_timeout_s == 300


def test_the_pods_environment_holds_no_account_key(tmp_path):
    training = remote_training(PodConfig(gpu_types=(H100,)))
    manifest = ArtifactRef(key="sha256/aa/manifest-0.json", sha256="a" * 64, size=10)
    wheel = ArtifactRef(key="sha256/bb/likeness.whl", sha256="b" * 64, size=10)
    request = training.pod_request(manifest, wheel)
    assert set(request.env) == {"LIKENESS_JOB_URL", "LIKENESS_WHEEL_URL", "LIKENESS_JOB_ID"}
    with fake_runpod(api_key=KEY, gpus=[FakeGpu(H100, 2.99)], root=tmp_path) as api:
        client = RunPodClient(KEY)
        pod = client.start_pod(request.model_copy(update={"docker_args": "sleep 60"}))
        (live,) = api.pods()
        # What the container's command really got: the pod's own key from RunPod, never the account's or S3's.
        assert live.container_env["RUNPOD_API_KEY"] == live.pod_key != KEY
        assert live.container_env["RUNPOD_POD_ID"] == pod.id
        for value in [*live.container_env.values(), live.docker_args]:
            assert KEY not in value and S3_SECRET not in value
        client.terminate(pod.id)


# The pod's own key ------------------------------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeRunPod]:
    with fake_runpod(api_key=KEY, gpus=[FakeGpu(H100, 2.99)], root=tmp_path / "runpod") as fake:
        yield fake


def idle_pod(api: FakeRunPod, name: str = "likeness-idle") -> tuple[str, str]:
    pod = RunPodClient(KEY).start_pod(PodRequest(name=name, image="img", gpu_types=[H100], docker_args="sleep 60"))
    return pod.id, next(p.pod_key for p in api.pods() if p.id == pod.id)


def test_a_pods_key_may_read_stop_and_terminate_its_own_pod_and_nothing_else(api):
    mine, key = idle_pod(api)
    other, _ = idle_pod(api, "likeness-other")
    as_pod = RunPodClient(key)
    for refused in (
        lambda: as_pod.terminate(other),
        lambda: as_pod.status(other),
        lambda: as_pod.start_pod(PodRequest(name="x", image="img", gpu_types=[H100])),
        lambda: as_pod.gpu_prices([H100]),
        lambda: as_pod.pods(),
        as_pod.check_key,
    ):
        with pytest.raises(RunPodKeyRejected):
            refused()
    assert sorted(p.id for p in api.pods()) == sorted([mine, other]) and len(api.created) == 2
    status = as_pod.status(mine)
    assert status is not None and status.is_running
    stop = 'mutation {{ podStop(input: {{podId: "{}"}}) {{ id desiredStatus }} }}'
    assert api.answer(stop.format(other), key)[1]["errors"][0]["message"] == "Unauthorized"
    assert api.answer(stop.format(mine), key)[1] == {"data": {"podStop": {"id": mine, "desiredStatus": "EXITED"}}}
    assert mine not in api.alive() and other in api.alive()
    as_pod.terminate(mine)
    assert [(t.pod_id, t.by) for t in api.terminations] == [(mine, "pod")]
    # Its pod gone, the key acts on nothing.
    with pytest.raises(RunPodKeyRejected):
        as_pod.terminate(other)
    RunPodClient(KEY).terminate(other)
    assert api.pods() == [] and [t.by for t in api.terminations] == ["pod", "account"]


def test_a_pod_ends_itself_through_the_api_with_its_own_key(api, capsys):
    mine, key = idle_pod(api)
    env = {"RUNPOD_POD_ID": mine, "RUNPOD_API_KEY": key, "RUNPOD_API_BASE_URL": api.url, "PATH": ""}
    assert can_end_itself(env)
    assert end_this_pod("a test", env)
    assert api.pods() == [] and [(t.pod_id, t.by) for t in api.terminations] == [(mine, "pod")]
    assert key not in capsys.readouterr().out


def fake_runpodctl(folder: Path, exit_code: int, says: str = "") -> Path:
    """A `runpodctl` that records its arguments and answers `exit_code` (and `says` on stderr)."""
    folder.mkdir(exist_ok=True)
    script = folder / "runpodctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/calls"\necho "{says}" >&2\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_without_the_api_a_pod_ends_itself_with_runpodctl_and_its_key_never_shows(tmp_path, capsys):
    key = "rp-pod-secret-4711"
    works = fake_runpodctl(tmp_path / "works", 0)
    env = {"RUNPOD_POD_ID": "pod123", "RUNPOD_API_KEY": key, "RUNPOD_API_BASE_URL": closed_port_url()}
    assert end_this_pod("a test", env | {"PATH": str(works)})
    assert (works / "calls").read_text().split("\n")[0] == "remove pod pod123"
    # runpodctl puts the key in its URL and prints that URL when it fails (runpodctl issue #149).
    fails = fake_runpodctl(tmp_path / "fails", 1, f"Post https://api.runpod.io/graphql?api_key={key}: x509")
    assert not end_this_pod("a test", env | {"PATH": str(fails)})
    assert (fails / "calls").read_text().split("\n")[:2] == ["remove pod pod123", "stop pod pod123"]
    out = capsys.readouterr().out
    assert "could not end pod pod123" in out and key not in out
    assert not can_end_itself({"RUNPOD_POD_ID": "pod123", "PATH": str(tmp_path / "nothing")})


# The agent on a pod ----------------------------------------------------------------------------------------------


class ObjectServer:
    """Presigned URLs, as far as the agent can tell: GET and PUT of objects under 127.0.0.1; `/heartbeat` answers
    `heartbeat()` (bytes, or None for a 404)."""

    def __init__(self, heartbeat: Callable[[], bytes | None]):
        self.objects: dict[str, bytes] = {}
        self.heartbeat = heartbeat
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = server.heartbeat() if self.path == "/heartbeat" else server.objects.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def do_PUT(self) -> None:
                server.objects[self.path] = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def counting_heartbeat() -> Callable[[], bytes]:
    count = iter(range(10**9))
    return lambda: beat(next(count), pod_id=None)


def start_agent_pod(
    api: FakeRunPod,
    tmp_path: Path,
    run_py: str,
    heartbeat: Callable[[], bytes | None] | None = None,
    heartbeat_url: str | None = None,
    timeout_s: float = 60,
    ttl_s: float = 3600,
) -> tuple[str, ObjectServer]:
    """A pod running the real agent on AI Toolkit's path, its `run.py` being `run_py`."""
    toolkit = tmp_path / "toolkit"
    toolkit.mkdir()
    (toolkit / "run.py").write_text(run_py)
    store = ObjectServer(heartbeat or counting_heartbeat())
    manifest = {
        "backend": "aitoolkit",
        "name": "Ada",
        "total_steps": 10,
        "training_folder": "output/Ada",
        "progress_every_s": 0.3,
        "files": [{"path": "config.yaml", "text": "job: extension\n"}],
        "watchdog": {
            "heartbeat": heartbeat_url or f"{store.url}/heartbeat",
            "driver_timeout_s": timeout_s,
            "check_every_s": 0.2,
            "ttl_s": ttl_s,
        },
        "uploads": {
            "checkpoints": {},
            "optimizer": {},
            "samples": {},
            "progress": f"{store.url}/progress.json",
            "log": f"{store.url}/log.txt",
        },
    }
    store.objects["/manifest.json"] = json.dumps(manifest).encode()
    env = {
        "LIKENESS_JOB_URL": f"{store.url}/manifest.json",
        "LIKENESS_WORKSPACE": "likeness",
        "AITOOLKIT_DIR": str(toolkit),
    }
    request = PodRequest(
        name="likeness-agent",
        image="ostris/aitoolkit:latest",
        gpu_types=[H100],
        env=env,
        docker_args=f"bash -c '{sys.executable} -m likeness.training.pod; exec sleep infinity'",
    )
    return RunPodClient(KEY).start_pod(request).id, store


def ended_by_itself(api: FakeRunPod, pod_id: str, within_s: float) -> float:
    """Seconds until the pod was terminated with its own key (an AssertionError after `within_s`)."""
    started = time.time()
    deadline = time.monotonic() + within_s
    while not any(t.pod_id == pod_id for t in api.terminations):
        assert time.monotonic() < deadline, f"pod {pod_id} still there after {within_s} s:\n{api.log(pod_id)}"
        time.sleep(0.05)
    (termination,) = [t for t in api.terminations if t.pod_id == pod_id]
    assert termination.by == "pod", api.log(pod_id)
    assert pod_id not in api.alive()
    return termination.at - started


RUN_PY_DONE = """import json, os
json.dump(dict(os.environ), open(os.path.join(os.path.dirname(__file__), "trainer-env.json"), "w"))
print("Ada:  100%|#####| 10/10 [00:01<00:00,  9.00it/s, lr: 1.0e-04 loss: 1.000e-01]", flush=True)
"""
RUN_PY_TRAINS = "import time\nprint('training', flush=True)\ntime.sleep(120)\n"


def test_a_finished_jobs_pod_ends_itself_after_its_last_upload(api, tmp_path):
    pod_id, store = start_agent_pod(api, tmp_path, RUN_PY_DONE)
    try:
        ended_by_itself(api, pod_id, within_s=60)
        progress = json.loads(store.objects["/progress.json"])
        assert (progress["status"], progress["step"]) == ("done", 10)
        assert b"10/10" in store.objects["/log.txt"]  # the log went up before the pod ended
        log = api.log(pod_id)
        assert f"ending pod {pod_id}: its job is done" in log
    finally:
        store.close()
    # The trainer (AI Toolkit's run.py here) ran without the pod's key; only the watchdog has it.
    seen = json.loads((tmp_path / "toolkit" / "trainer-env.json").read_text())
    assert "RUNPOD_API_KEY" not in seen and seen["RUNPOD_POD_ID"] == pod_id
    assert KEY not in json.dumps(seen)


def test_a_pod_whose_driver_heartbeat_stops_changing_ends_itself_beside_ai_toolkit(api, tmp_path):
    frozen = beat(1, pod_id=None)
    pod_id, store = start_agent_pod(api, tmp_path, RUN_PY_TRAINS, heartbeat=lambda: frozen, timeout_s=2)
    try:
        seconds = ended_by_itself(api, pod_id, within_s=60)
        assert "heartbeat unchanged for" in api.log(pod_id) and "(bound 2 s): its driver is gone" in api.log(pod_id)
        assert seconds >= 2
        assert json.loads(store.objects["/progress.json"])["status"] == "running"  # ended mid-training
    finally:
        store.close()


def test_a_pod_reaching_its_ttl_ends_itself_though_its_driver_beats(api, tmp_path):
    pod_id, store = start_agent_pod(api, tmp_path, RUN_PY_TRAINS, timeout_s=1, ttl_s=3)
    try:
        seconds = ended_by_itself(api, pod_id, within_s=60)
        assert "reached its TTL (3 s" in api.log(pod_id)
        assert seconds >= 3
    finally:
        store.close()


def test_a_store_the_pod_cannot_reach_is_not_a_dead_driver_the_ttl_still_ends_it(api, tmp_path):
    unreachable = closed_port_url() + "/heartbeat"
    started = time.monotonic()
    pod_id, store = start_agent_pod(api, tmp_path, RUN_PY_TRAINS, heartbeat_url=unreachable, timeout_s=0.5, ttl_s=4)
    try:
        time.sleep(2.5)  # five bounds and more of failed reads
        assert pod_id in api.alive() and api.terminations == [], api.log(pod_id)
        ended_by_itself(api, pod_id, within_s=60)
        assert time.monotonic() - started >= 4
        assert "reached its TTL" in api.log(pod_id)
    finally:
        store.close()


def test_a_job_sweeps_this_stores_orphans_and_no_one_elses_before_it_starts_its_pod(api, likeness_env):
    from likeness.runpod.jobs import job_prefix, new_job_id, pod_name
    from likeness.storage.artifacts import get_store

    store = get_store()
    heartbeats = {"alive": (5, False), "orphan": (3600, False), "finished": (5, True), "elsewhere": None}
    pods = {}
    for what, heartbeat in heartbeats.items():
        job = new_job_id()
        pods[what], _ = idle_pod(api, pod_name(job))
        if heartbeat:
            age, done = heartbeat
            record = {"pod_id": pods[what], "time": time.time() - age, "done": done, "flow_run_id": None}
            store.put_bytes(f"{job_prefix(job)}heartbeat.json", json.dumps(record).encode())
    theirs, _ = idle_pod(api, "jupyter")
    profile = load_profile("tiny")
    job = TrainJob(
        name="Ada", trigger="Ada", config=profile.train, model=profile.models["video"], dtype="float32", device="cpu"
    )
    RemoteTraining(job, "runpod-native", [], PodConfig(), RunPodClient(KEY), store)._sweep_orphans()
    assert sorted(t.pod_id for t in api.terminations) == sorted([pods["orphan"], pods["finished"]])
    assert {t.by for t in api.terminations} == {"account"}
    assert sorted(p.id for p in api.pods()) == sorted([pods["alive"], pods["elsewhere"], theirs])
    for pod in api.pods():
        RunPodClient(KEY).terminate(pod.id)

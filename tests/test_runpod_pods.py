"""The pod lifecycle through the real `runpod` SDK, against the fake RunPod API on loopback whose pods really run."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import runpod
from pydantic import SecretStr

from likeness.runpod.pods import NoGpuAvailable, PodRequest, RunPodClient, RunPodError, RunPodKeyRejected
from tests.fake_runpod import URL_VARIABLE, FakeGpu, FakeRunPod, fake_runpod

KEY = f"rp-test-{secrets.token_hex(8)}"
READ_ONLY_KEY = f"rp-read-{secrets.token_hex(8)}"
WRONG_KEY = f"rp-wrong-{secrets.token_hex(8)}"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100 80GB PCIe"
GPUS = [FakeGpu(H100, 2.99), FakeGpu(A100, 1.64, community_price=1.19)]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeRunPod]:
    with fake_runpod(api_key=KEY, gpus=GPUS, root=tmp_path / "runpod", read_only_keys=[READ_ONLY_KEY]) as fake:
        yield fake


@pytest.fixture
def client(api: FakeRunPod) -> RunPodClient:
    return RunPodClient(SecretStr(KEY))


def pod_request(**changes: object) -> PodRequest:
    fields: dict[str, object] = {
        "name": "likeness-test",
        "image": "likeness/worker:test",
        "gpu_types": [H100],
        "docker_args": "sleep 60",
    }
    return PodRequest.model_validate(fields | changes)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout_s} s")
        time.sleep(0.05)


def everything_said(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def test_the_right_key_passes_the_check(api: FakeRunPod, client: RunPodClient) -> None:
    key_before = runpod.api_key
    client.check_key()
    assert api.calls == ["myself"]
    assert runpod.api_key == key_before  # the key does not linger in the SDK's global


def test_using_the_sdk_leaves_the_process_logging_alone(api: FakeRunPod) -> None:
    # Importing `runpod` calls logging.basicConfig; a fresh process shows whether the client undid it.
    script = (
        "import logging, os\n"
        "from likeness.runpod.pods import RunPodClient\n"
        "RunPodClient(os.environ['TEST_RUNPOD_KEY']).check_key()\n"
        "print(len(logging.getLogger().handlers), logging.getLogger().level)\n"
    )
    env = os.environ | {"TEST_RUNPOD_KEY": KEY}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(logging.WARNING)]
    assert api.calls == ["myself"]


def test_a_wrong_key_is_rejected_without_showing_it(api: FakeRunPod, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = RunPodClient(WRONG_KEY)
    with pytest.raises(RunPodKeyRejected) as checked:
        client.check_key()
    with pytest.raises(RunPodKeyRejected) as started:
        client.start_pod(pod_request(gpu_types=[H100, A100]))

    assert "LIKENESS_RUNPOD_API_KEY" in str(checked.value)
    for error in (checked.value, started.value):
        assert WRONG_KEY not in everything_said(error)
        assert WRONG_KEY not in repr(error)
    assert WRONG_KEY not in caplog.text
    assert WRONG_KEY not in repr(client)
    assert api.calls == ["myself", "GpuTypes"]  # refused at the first request: no GPU type was tried after it
    assert api.created == []


@pytest.mark.parametrize("key", [None, "", "  ", SecretStr("")])
def test_a_missing_key_is_refused_before_any_request(api: FakeRunPod, key: SecretStr | str | None) -> None:
    with pytest.raises(RunPodKeyRejected, match="set LIKENESS_RUNPOD_API_KEY"):
        RunPodClient(key)
    assert api.calls == []


def test_a_read_only_key_may_look_but_not_start_pods(api: FakeRunPod) -> None:
    client = RunPodClient(READ_ONLY_KEY)
    client.check_key()
    assert client.gpu_prices([H100]) == {H100: 2.99}
    with pytest.raises(RunPodKeyRejected, match="Read/Write") as refused:
        client.start_pod(pod_request(gpu_types=[H100, A100]))
    assert READ_ONLY_KEY not in everything_said(refused.value)
    # The refusal is not taken for a busy GPU: the next type is not tried.
    assert api.calls.count("podFindAndDeployOnDemand") == 1
    assert api.pods() == []


def test_a_pod_runs_its_command_with_its_env(api: FakeRunPod, client: RunPodClient) -> None:
    greeting = 'say "hi" \\ then\nbye'  # quotes, a backslash and a line break must survive the SDK's query
    command = (
        'echo started; printf %s "$GREETING from $RUNPOD_POD_ID" > greeting.txt; '
        'python -c "import sys; print(sys.prefix)" > python.part && mv python.part python.txt; sleep 60'
    )
    pod = client.start_pod(pod_request(env={"GREETING": greeting}, docker_args=command))

    (live,) = api.pods()
    wait_for((live.folder / "python.txt").exists)
    assert (live.folder / "greeting.txt").read_text() == f"{greeting} from {pod.id}"
    assert (live.folder / "python.txt").read_text().strip() == sys.prefix  # `python` is this venv's
    assert live.env == {"GREETING": greeting}
    assert (pod.gpu_type, pod.cost_per_hr, pod.name) == (H100, 2.99, "likeness-test")
    assert abs(pod.started_at - time.time()) < 30
    assert api.alive() == [pod.id]

    status = client.status(pod.id)
    assert status is not None
    assert (status.desired_status, status.is_running, status.cost_per_hr) == ("RUNNING", True, 2.99)

    client.terminate(pod.id)
    assert client.status(pod.id) is None
    assert api.alive() == [] and api.pods() == []
    assert not live.folder.exists()  # its disk went with it
    assert "started" in api.log(pod.id)
    client.terminate(pod.id)  # again: already gone is fine
    assert client.status("nosuchpod0000") is None


def test_prices_come_from_the_api(api: FakeRunPod, client: RunPodClient) -> None:
    assert client.gpu_prices([H100, A100, "NVIDIA Imaginary 1TB"]) == {H100: 2.99, A100: 1.64}
    assert client.gpu_prices([H100, A100], cloud_type="COMMUNITY") == {A100: 1.19}  # no H100 on community
    assert client.gpu_prices([H100, A100], cloud_type="ALL") == {H100: 2.99, A100: 1.19}

    pod = client.start_pod(pod_request(gpu_types=[A100], cloud_type="COMMUNITY", gpu_count=2))
    assert pod.cost_per_hr == pytest.approx(2.38)  # what the API reports for the pod: two GPUs on community
    client.terminate(pod.id)


def test_an_unavailable_gpu_type_falls_back_to_the_next(api: FakeRunPod, client: RunPodClient) -> None:
    api.set_available(H100, False)
    pod = client.start_pod(pod_request(gpu_types=[H100, A100]))

    assert (pod.gpu_type, pod.cost_per_hr) == (A100, 1.64)
    assert [(c.gpu_type, c.pod_id is not None) for c in api.created] == [(H100, False), (A100, True)]
    assert api.created[0].error is not None and api.created[0].error.startswith("There are no longer any instances")
    assert api.calls == ["GpuTypes", "podFindAndDeployOnDemand", "GpuTypes", "podFindAndDeployOnDemand", "pod"]
    assert [p.gpu for p in api.pods()] == [A100]
    client.terminate(pod.id)


def test_no_gpu_available_names_every_type_tried(api: FakeRunPod, client: RunPodClient) -> None:
    api.set_available(H100, False)
    api.set_available(A100, False)
    imaginary = "NVIDIA Imaginary 1TB"
    with pytest.raises(NoGpuAvailable) as caught:
        client.start_pod(pod_request(gpu_types=[H100, A100, imaginary]))

    assert list(caught.value.tried) == [H100, A100, imaginary]
    for gpu_type in (H100, A100, imaginary):
        assert gpu_type in str(caught.value)
    assert "none available" in caught.value.tried[H100]
    assert "no GPU type of that name" in caught.value.tried[imaginary]
    assert [c.gpu_type for c in api.created] == [H100, A100]  # the SDK checks the type exists before creating
    assert api.pods() == []


def test_pods_lists_only_ours(api: FakeRunPod, client: RunPodClient) -> None:
    ours = client.start_pod(pod_request(name="likeness-train-ada"))
    theirs = client.start_pod(pod_request(name="jupyter-notebook"))

    assert [(p.id, p.name, p.is_running) for p in client.pods()] == [(ours.id, "likeness-train-ada", True)]
    assert {p.id for p in client.pods(name_prefix="")} == {ours.id, theirs.id}
    client.terminate(ours.id)
    client.terminate(theirs.id)
    assert client.pods(name_prefix="") == []


def test_a_lost_pod_shows_as_not_running(api: FakeRunPod, client: RunPodClient) -> None:
    pod = client.start_pod(pod_request())
    api.lose(pod.id)

    status = client.status(pod.id)
    assert status is not None
    assert (status.desired_status, status.is_running, status.uptime_s) == ("EXITED", False, 0)
    assert api.alive() == []
    assert [p.id for p in client.pods()] == [pod.id]  # still on the account, still to be terminated
    client.terminate(pod.id)
    assert client.status(pod.id) is None


def test_a_command_that_exits_is_started_again(api: FakeRunPod, client: RunPodClient) -> None:
    pod = client.start_pod(pod_request(docker_args="echo run >> runs.txt"))
    runs = api.pods()[0].folder / "runs.txt"

    wait_for(lambda: runs.exists() and runs.read_text().count("run") >= 2)
    status = client.status(pod.id)
    assert status is not None and status.desired_status == "RUNNING"
    assert api.pods()[0].restarts >= 1
    client.terminate(pod.id)


def test_a_pod_left_behind_fails_the_test_and_is_terminated(tmp_path: Path) -> None:
    url_before = os.environ.get(URL_VARIABLE)
    with pytest.raises(AssertionError, match="pods left on the fake RunPod account") as caught:
        with fake_runpod(api_key=KEY, gpus=GPUS, root=tmp_path) as api:
            pod = RunPodClient(KEY).start_pod(pod_request(docker_args="echo $$ > pid.txt; exec sleep 60"))
            pid_file = api.pods()[0].folder / "pid.txt"
            wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit())
            pid = int(pid_file.read_text())

    assert pod.id in str(caught.value)
    assert api.alive() == [] and api.pods() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert os.environ.get(URL_VARIABLE) == url_before


def test_clients_in_threads_each_use_their_own_key(api: FakeRunPod) -> None:
    good, bad = RunPodClient(KEY), RunPodClient(WRONG_KEY)

    def accepted(client: RunPodClient) -> bool:
        try:
            client.check_key()
        except RunPodKeyRejected:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(accepted, [good, bad] * 10)) == [True, False] * 10


def test_an_unreachable_api_is_an_error_without_the_key(api: FakeRunPod) -> None:
    with socket.socket() as probe:  # a port nobody listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = RunPodClient(KEY, api_base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(RunPodError) as caught:
        client.status("abc")
    assert not isinstance(caught.value, RunPodKeyRejected)
    assert "ConnectionError" in str(caught.value)
    assert KEY not in everything_said(caught.value)
    assert os.environ[URL_VARIABLE] == api.url  # put back after the call

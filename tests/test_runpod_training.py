"""Training on RunPod end to end, against a fake RunPod API on 127.0.0.1 whose pods really run.

Each pod is a local process running the real bootstrap: it downloads the job's Likeness wheel and manifest from
SeaweedFS (S3 on 127.0.0.1) through presigned URLs, installs the wheel, trains on the tiny models with our trainer
(for `runpod-aitoolkit`, `tests/fake_aitoolkit/run.py` checks the YAML it was sent and runs our trainer in AI
Toolkit's place) and uploads checkpoints, samples and progress through presigned URLs. No pod may outlive a test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from likeness import __version__
from likeness.config import PodConfig, StopWhenFlat
from likeness.identity import reference_face
from likeness.models.profiles import load_profile, model_path
from likeness.models.wan_lora import is_complete_safetensors, read_lora_metadata
from likeness.runpod.jobs import JOBS_PREFIX, job_prefix, new_job_id, pod_name
from likeness.runpod.pods import PodRequest, RunPodClient, RunPodKeyRejected
from likeness.runpod.sweep import sweep_pods
from likeness.settings import get_settings
from likeness.storage.artifacts import put_bytes
from likeness.storage.s3 import S3Store
from likeness.training.remote import RemoteTraining, TrainingStopped
from likeness.training.spec import TrainJob
from tests.fake_runpod import FakeGpu, fake_runpod
from tests.tcp_cut import CuttableRelay

pytestmark = pytest.mark.slow

KEY = "rp-test-key-5521"
GPUS = [
    FakeGpu(id="NVIDIA GeForce RTX 5090", price=0.89),
    FakeGpu(id="NVIDIA H100 80GB HBM3", price=2.69),
]
FAKE_AITOOLKIT = Path(__file__).parent / "fake_aitoolkit"


@pytest.fixture
def s3_store(s3_server, likeness_env, monkeypatch) -> S3Store:
    from likeness.storage import artifacts

    monkeypatch.setenv("LIKENESS_STORE_URI", f"s3://runpod-{os.getpid()}-{time.time_ns()}/jobs")
    monkeypatch.setenv("LIKENESS_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("LIKENESS_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("LIKENESS_S3_SECRET_KEY", s3_server.secret_key)
    get_settings.cache_clear()
    artifacts.get_store.cache_clear()
    store = artifacts.get_store()
    assert isinstance(store, S3Store)
    return store


@pytest.fixture
def api(models_dir, tmp_path):
    # What each image holds, as far as a local process can: a workspace, the tiny models, AI Toolkit's run.py.
    pod_env = {
        "LIKENESS_WORKSPACE": "likeness",
        "LIKENESS_MODELS_DIR": str(models_dir),
        "LIKENESS_DATA_DIR": "likeness-data",
        "HF_HUB_OFFLINE": "1",
        # One intra-op thread for the pod's trainer: with torch's one per core, its threads spin against every
        # other busy process on a small loaded machine (the lost-pod test took 40 s alone and 150 s beside two).
        "OMP_NUM_THREADS": "1",
    }
    images = {
        f"likeness/worker:{__version__}": pod_env,
        "ostris/aitoolkit:latest": {**pod_env, "AITOOLKIT_DIR": str(FAKE_AITOOLKIT)},
    }
    with fake_runpod(api_key=KEY, gpus=GPUS, images=images, root=tmp_path / "runpod") as fake:
        yield fake


def dataset(store: S3Store, trigger: str = "Ada", count: int = 3) -> list:
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        mask = io.BytesIO()
        Image.fromarray(np.full((64, 48), 255, np.uint8)).save(mask, "PNG")
        files += [
            (f"dataset/{trigger}_{i}.png", put_bytes(buffer.getvalue(), f"{trigger}_{i}.png", store)),
            (f"dataset/{trigger}_{i}.txt", f"{trigger}, shot {i}"),
            (f"masks/{trigger}_{i}.png", put_bytes(mask.getvalue(), f"{trigger}_{i}.png", store)),
        ]
    return files


def tiny_job(profile: str = "tiny", **train) -> TrainJob:
    loaded = load_profile(profile)
    config = loaded.train.model_copy(update=train)
    return TrainJob(
        name="Ada", trigger="Ada", config=config, model=loaded.models["video"], dtype="float32", device="cpu"
    )


def training(job, store, api, backend="runpod-native", pod=None, **kwargs) -> RemoteTraining:
    return RemoteTraining(
        job,
        backend,
        dataset(store),
        pod or PodConfig(gpu_types=tuple(g.id for g in GPUS), poll_seconds=0.5, silent_after_s=120),
        RunPodClient(KEY, api.url),
        store,
        **kwargs,
    )


def test_a_job_trains_on_a_pod_that_gets_only_presigned_urls_and_is_terminated(s3_store, api, s3_server):
    job = tiny_job()
    seen = []
    result = training(job, s3_store, api, on_progress=lambda *report: seen.append(report)).run()

    assert [c.step for c in result.checkpoints] == [3, 6]
    for checkpoint in result.checkpoints:
        assert [f.filename for f in checkpoint.files] == [f"Ada_{checkpoint.step:09d}.safetensors"]
        assert len(checkpoint.samples) == len(job.config.sample_prompts)
        path = s3_store.get_file(checkpoint.files[0].key, Path(api.root) / checkpoint.files[0].filename)
        assert is_complete_safetensors(path)
        assert read_lora_metadata(path)["ss_steps"] == str(checkpoint.step)
    # optimizer.pt of the last save (an earlier one may be overwritten by the next save before it is seen).
    assert result.checkpoints[-1].optimizer is not None
    # Progress reached the driver while training ran, and ended done at the last step.
    assert seen[-1][:2] == (6, 6) and seen[-1][3] == "done"
    assert result.cost.pods == 1 and result.cost.gpu_type == GPUS[0].id
    assert result.cost.cost_per_hr == GPUS[0].price
    assert result.cost.dollars == pytest.approx(GPUS[0].price * result.cost.pod_seconds / 3600, abs=1e-3)
    assert api.alive() == []
    (created,) = api.created
    env = json.dumps(created.env)
    # A presigned URL names the access key id (X-Amz-Credential), never the secret key.
    for secret in (KEY, s3_server.secret_key):
        assert secret not in env and secret not in created.docker_args
    assert set(created.env) == {"LIKENESS_JOB_URL", "LIKENESS_WHEEL_URL", "LIKENESS_JOB_ID"}


def test_the_first_gpu_type_unavailable_the_next_is_taken(s3_store, api):
    api.set_available(GPUS[0].id, False)
    result = training(tiny_job(steps=2, checkpoint_every=2), s3_store, api).run()
    assert result.cost.gpu_type == GPUS[1].id and result.cost.cost_per_hr == GPUS[1].price
    assert [c.gpu_type for c in api.created] == [GPUS[0].id, GPUS[1].id]


def test_a_pod_lost_mid_training_is_replaced_and_resumes_from_the_last_checkpoint(s3_store, api):
    job = tiny_job(steps=300, checkpoint_every=75, sample_every=300)
    lost: list[str] = []

    def lose_after_first_checkpoint(step, total, loss, status):
        if any(c.optimizer for c in run.published.values()) and not lost:
            lost.extend(api.alive())
            api.lose(lost[0])

    run = training(job, s3_store, api, on_progress=lose_after_first_checkpoint)
    result = run.run()
    assert lost and result.cost.pods == 2
    assert [c.step for c in result.checkpoints] == [75, 150, 225, 300]
    # The second pod was handed the first pod's newest checkpoint and its optimizer state.
    second = [k for k in s3_store.list("sha256/") if k.endswith("/manifest-1.json")]
    assert second
    manifest = json.loads(s3_store.get_bytes(second[0]))
    restored = [item["path"] for item in manifest["files"] if item["path"].startswith("training/")]
    newest = max(int(p.split("_")[-1].split(".")[0]) for p in restored if p.endswith(".safetensors"))
    assert 75 <= newest < 300 and "training/optimizer.pt" in restored
    log = s3_store.get_bytes(f"{run.prefix}log-1.txt").decode()
    assert f"resuming from step {newest}" in log and "without optimizer state" not in log
    # The second pod trained from the step after the checkpoint, never the steps before it.
    assert f" {newest + 1}/300 " in log and f" {newest}/300 " not in log
    assert api.alive() == []


def test_our_trainer_on_a_pod_stops_where_the_identity_scores_went_flat_and_the_driver_says_so(
    s3_store, api, face_photo
):
    face, _ = reference_face(Image.open(face_photo), "the reference")
    rule = StopWhenFlat(min_step=4, patience=1)
    job = tiny_job(steps=6, checkpoint_every=2, stop_when_flat=rule).model_copy(update={"reference": face})
    result = training(job, s3_store, api).run()
    # The tiny model draws no face: no sample scores, and min_step holds training to step 4.
    assert [c.step for c in result.checkpoints] == [2, 4]
    assert result.stopped_early is not None and result.stopped_early.step == 4
    assert result.stopped_early.reason.startswith("no identity score in the 2 sampled checkpoints so far")
    assert api.alive() == []


def test_ai_toolkit_gets_a_yaml_its_config_classes_read_and_its_files_are_published(s3_store, api, models_dir):
    # AI Toolkit cannot load `tiny:` sources: the job names the tiny model's folder, as a user's local model.
    folder = model_path("video", load_profile("tiny"), get_settings())
    job = tiny_job().model_copy(
        update={"model": load_profile("tiny").models["video"].model_copy(update={"source": str(folder)})}
    )
    result = training(
        job,
        s3_store,
        api,
        backend="runpod-aitoolkit",
    ).run()
    # AI Toolkit's last file has no step in its name; it is published under the step like the others.
    assert [f.filename for c in result.checkpoints for f in c.files] == [
        "Ada_000000003.safetensors",
        "Ada_000000006.safetensors",
    ]
    assert api.created[0].image == "ostris/aitoolkit:latest"
    assert "AI Toolkit would not read" not in api.log(api.created[0].pod_id)


def test_a_wrong_key_is_refused_before_anything_is_created(s3_store, api, monkeypatch):
    from tasks.train_runpod import fit_lora_on_runpod
    from tests.records import dataset_item, dataset_ref

    monkeypatch.setenv("LIKENESS_RUNPOD_API_KEY", "rp-wrong-key")
    monkeypatch.setenv("RUNPOD_API_BASE_URL", api.url)
    get_settings.cache_clear()
    files = dataset(s3_store)
    image = files[0][1]
    items = (dataset_item("front", image, "Ada, front"),)
    before = s3_store.list()
    with pytest.raises(RunPodKeyRejected) as caught:
        fit_lora_on_runpod.fn(
            dataset_ref(image, items).training_set(),
            tiny_job().config,
            load_profile("tiny"),
            "runpod-native",
            PodConfig(),
        )
    assert "LIKENESS_RUNPOD_API_KEY" in str(caught.value) and "rp-wrong-key" not in str(caught.value)
    # No pod asked for, and nothing of the job (wheel, manifest) written to the store.
    assert api.created == [] and "podFindAndDeployOnDemand" not in api.calls
    assert s3_store.list() == before


def test_a_stop_terminates_the_pod(s3_store, api):
    started = []

    def stop_once_running():
        if api.alive():
            started.append(True)
            raise KeyboardInterrupt

    with pytest.raises(TrainingStopped):
        training(tiny_job(steps=200, checkpoint_every=100), s3_store, api, check_stop=stop_once_running).run()
    assert started and api.alive() == []


DRIVER = """
import sys, time
from likeness.config import PodConfig
from likeness.runpod.pods import RunPodClient
from likeness.storage.artifacts import get_store
from tests.test_runpod_training import dataset, tiny_job, GPUS
from likeness.training.remote import RemoteTraining
store = get_store()
pod = PodConfig(gpu_types=tuple(g.id for g in GPUS), poll_seconds=0.5)
RemoteTraining(tiny_job(steps=400, checkpoint_every=200), "runpod-native", dataset(store), pod,
               RunPodClient(sys.argv[1], sys.argv[2]), store).run()
"""


def test_a_killed_driver_leaves_a_pod_the_sweeper_terminates(s3_store, api):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, KEY, api.url], cwd=Path(__file__).parents[1], env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 120
        while not api.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert api.alive(), "the driver started no pod"
        client = RunPodClient(KEY, api.url)
        time.sleep(1.5)
        assert sweep_pods(client, s3_store, ttl_hours=6, stale_after_s=30) == []  # its driver is alive
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        time.sleep(3)
        (swept,) = sweep_pods(client, s3_store, ttl_hours=6, stale_after_s=2)
        assert "heartbeat stopped" in swept.reason
        assert api.alive() == []
    finally:
        driver.kill()


def test_a_cli_train_cancelled_through_the_prefect_api_terminates_its_pod(
    s3_store, api, s3_server, prefect_api, models_dir, tmp_path
):
    from tests.conftest import cli_env
    from tests.prefect_server import api_post

    folder = tmp_path / "ds"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
        (folder / f"{i}.txt").write_text(f"Ada, shot {i}\n")
    env = cli_env(tmp_path, models_dir, prefect_api)
    env.update(
        {name: os.environ[name] for name in ("LIKENESS_STORE_URI", "LIKENESS_S3_ENDPOINT", "LIKENESS_S3_ACCESS_KEY")}
    )
    env.update(LIKENESS_S3_SECRET_KEY=s3_server.secret_key, LIKENESS_RUNPOD_API_KEY=KEY, RUNPOD_API_BASE_URL=api.url)
    cli = Path(sys.executable).parent / "likeness"
    args = ["train", "Ada", "--dataset", str(folder), "--backend", "runpod-native", "--gpu", GPUS[0].id]
    args += ["--set", "train.steps=400", "--set", "train.checkpoint_every=200", "--set", "pod.poll_seconds=0.5"]
    args += ["--beyond-limits"]
    driver = subprocess.Popen([str(cli), *args], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not api.alive() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert api.alive(), f"the CLI started no pod: {driver.stderr.read() if driver.poll() is not None else ''}"
        (run,) = api_post(
            prefect_api,
            "/flow_runs/filter",
            {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}, "flows": {"name": {"any_": ["train-lora"]}}},
        )
        api_post(prefect_api, f"/flow_runs/{run['id']}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 2, stderr[-3000:]
    assert "the run was cancelled (from the Prefect UI or API)" in stderr
    (ended,) = api_post(prefect_api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}})
    assert ended["state"]["type"] == "CANCELLED"
    assert api.alive() == [] and len(api.created) == 1
    assert KEY not in stderr


SELF_ENDING_DRIVER = """
import sys
from likeness.config import PodConfig
from likeness.runpod.pods import RunPodClient
from likeness.storage.artifacts import get_store
from tests.test_runpod_training import dataset, tiny_job, GPUS
from likeness.training.remote import RemoteTraining
store = get_store()
pod = PodConfig(gpu_types=tuple(g.id for g in GPUS), poll_seconds=0.5, driver_timeout_s=float(sys.argv[3]))
RemoteTraining(tiny_job(steps=3000, checkpoint_every=1500), "runpod-native", dataset(store), pod,
               RunPodClient(sys.argv[1], sys.argv[2]), store).run()
"""


@pytest.mark.parametrize("ender", ["pod", "sweeper"])
def test_a_killed_drivers_pod_ends_within_the_bound_by_itself_or_by_the_sweeper(s3_store, api, s3_server, ender):
    """SIGKILL the driver while its pod trains. `pod`: no sweeper runs, the pod's watchdog ends it within
    `driver_timeout_s` (5 s here). `sweeper`: the pod has no key to end itself with, and a sweeper runs every second
    with the same 5 s bound, as the sweep-pods deployment does every 10 min with 900 s. Both print the seconds from
    the kill to the pod's termination."""
    bound = 5.0
    client = RunPodClient(KEY, api.url)
    # A pod an earlier job of this store left behind (its driver's heartbeat an hour old): swept before the new pod.
    orphan_job = new_job_id()
    orphan = client.start_pod(
        PodRequest(name=pod_name(orphan_job), image="img", gpu_types=[GPUS[0].id], docker_args="sleep 600")
    ).id
    stale = {"pod_id": orphan, "time": time.time() - 3600, "done": False, "flow_run_id": None}
    s3_store.put_bytes(f"{job_prefix(orphan_job)}heartbeat.json", json.dumps(stale).encode())
    api.pod_keys = ender == "pod"
    driver = subprocess.Popen(
        [sys.executable, "-c", SELF_ENDING_DRIVER, KEY, api.url, str(bound)],
        cwd=Path(__file__).parents[1],
        env=dict(os.environ),
    )
    sweeping = threading.Event()
    try:
        deadline = time.monotonic() + 240
        while not api.alive() or not trained_a_step(s3_store):
            assert time.monotonic() < deadline and driver.poll() is None, "the driver started no training"
            time.sleep(0.2)
        (pod,) = [p for p in api.pods() if p.id != orphan]
        assert [(t.pod_id, t.by) for t in api.terminations] == [(orphan, "account")]
        assert api.calls.index("podTerminate") < len(api.calls) - 1 - api.calls[::-1].index("podFindAndDeployOnDemand")
        # What the pod's processes got: RunPod's pod-scoped key, never the account's key or the store's secret.
        assert pod.container_env.get("RUNPOD_API_KEY") == (pod.pod_key if ender == "pod" else None)
        assert pod.pod_key != KEY
        for value in pod.container_env.values():
            assert KEY not in value and s3_server.secret_key not in value
        if ender == "sweeper":

            def sweep_every_second() -> None:
                while not sweeping.wait(1.0):
                    sweep_pods(client, s3_store, ttl_hours=6, stale_after_s=bound)

            threading.Thread(target=sweep_every_second, daemon=True).start()
        driver.send_signal(signal.SIGKILL)
        killed = time.time()
        driver.wait()
        deadline = time.monotonic() + bound + 30
        while pod.id not in [t.pod_id for t in api.terminations]:
            assert time.monotonic() < deadline, f"pod {pod.id} outlived its driver:\n{api.log(pod.id)}"
            time.sleep(0.1)
        (ended,) = [t for t in api.terminations if t.pod_id == pod.id]
        seconds = ended.at - killed
        print(f"\n{ender}: pod {pod.id} terminated {seconds:.1f} s after its driver was killed (bound {bound:g} s)")
        assert ended.by == ("pod" if ender == "pod" else "account")
        assert seconds < bound + 5
        if ender == "pod":
            assert "its driver's heartbeat unchanged for" in api.log(pod.id)
        else:
            assert "this pod cannot end itself" in api.log(pod.id)
        assert api.alive() == []
    finally:
        sweeping.set()
        driver.kill()


def trained_a_step(store: S3Store) -> bool:
    """Whether the (one) job's pod reported a training step."""
    for key in store.list(JOBS_PREFIX):
        if key.endswith("/progress-0.json"):
            with contextlib.suppress(Exception):
                if json.loads(store.get_bytes(key))["step"] >= 1:
                    return True
    return False


def test_the_store_stopped_during_a_checkpoint_upload_and_back_after_30_s_publishes_it_once_whole(
    s3_server, likeness_env, monkeypatch, api, tmp_path
):
    from likeness.storage import artifacts

    # Everyone reaches S3 through a relay, cut at the pod's first checkpoint PUT: the upload is reset mid-request
    # and every connection, the driver's too, is refused for 30 s.
    with CuttableRelay(int(s3_server.endpoint.rsplit(":", 1)[1])) as relay:
        monkeypatch.setenv("LIKENESS_STORE_URI", f"s3://outage-{os.getpid()}-{time.time_ns()}/jobs")
        monkeypatch.setenv("LIKENESS_S3_ENDPOINT", f"http://127.0.0.1:{relay.port}")
        monkeypatch.setenv("LIKENESS_S3_ACCESS_KEY", s3_server.access_key)
        monkeypatch.setenv("LIKENESS_S3_SECRET_KEY", s3_server.secret_key)
        get_settings.cache_clear()
        artifacts.get_store.cache_clear()
        store = artifacts.get_store()
        relay.cut_when(lambda head: head.startswith(b"PUT ") and b"_000000003.safetensors" in head, outage_s=30)

        run = training(tiny_job(), store, api)
        result = run.run()

        ((started, ended),) = relay.cuts
        assert ended - started >= 30
        # One pod (it waited the outage out), each checkpoint published once, and whole: the bytes the pod wrote.
        assert result.cost.pods == 1
        assert [c.step for c in result.checkpoints] == [3, 6]
        for checkpoint in result.checkpoints:
            (file,) = checkpoint.files
            data = store.get_bytes(file.key)
            assert hashlib.sha256(data).hexdigest() == file.sha256
            assert store.get_bytes(f"{run.prefix}out/{file.filename}") == data
            (tmp_path / file.filename).write_bytes(data)
            assert is_complete_safetensors(tmp_path / file.filename)
        published = [k for k in store.list("sha256/") if k.endswith("_000000003.safetensors")]
        assert len(published) == 1
    assert api.alive() == []

"""What a pod is handed: presigned URLs that expire with the pod and write only under its job's prefix.

Fast: URLs are signed locally (the store's region is given, so the SDK asks no server anything).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from likeness.config import PodConfig, StopWhenFlat
from likeness.models.profiles import load_profile
from likeness.storage.artifacts import ArtifactRef
from likeness.storage.s3 import S3Store
from likeness.training.remote import PublishedCheckpoint, RemoteTraining
from likeness.training.spec import TrainJob

BUCKET, PREFIX = "studio", "likeness"


def remote_training(ttl_hours: float, stop_when_flat: StopWhenFlat | None = None) -> RemoteTraining:
    # Port 9 (discard) on loopback: nothing is sent, the store only signs.
    store = S3Store("http://127.0.0.1:9", "key-id", "secret", BUCKET, PREFIX, region="us-east-1", create_bucket=False)
    profile = load_profile("tiny")
    config = profile.train.model_copy(update={"stop_when_flat": stop_when_flat})
    job = TrainJob(
        name="Ada", trigger="Ada", config=config, model=profile.models["video"], dtype="float32", device="cpu"
    )
    image = ArtifactRef(key="sha256/aa/Ada_front.png", sha256="a" * 64, size=10)
    dataset = [("dataset/Ada_front.png", image), ("dataset/Ada_front.txt", "Ada, front view")]
    return RemoteTraining(job, "runpod-native", dataset, PodConfig(ttl_hours=ttl_hours), None, store)  # type: ignore[arg-type]


def urls(manifest: dict) -> list[tuple[str, str]]:
    """(what, URL) of every presigned URL in a pod's manifest."""
    found = [("read " + entry["path"], entry["url"]) for entry in manifest["files"] if "url" in entry]
    for group, value in manifest["uploads"].items():
        items = value.items() if isinstance(value, dict) else [(group, value)]
        found += [(f"write {name}", url) for name, url in items]
    return found


def test_every_url_expires_with_the_pods_ttl_not_the_s3_maximum():
    for ttl_hours in (0.5, 6.0):
        for what, url in urls(remote_training(ttl_hours).manifest(attempt=1)):
            expires = parse_qs(urlsplit(url).query)["X-Amz-Expires"]
            assert expires == [str(int(ttl_hours * 3600))], f"{what}: {expires}"


def test_every_write_is_under_the_jobs_prefix_and_reads_are_the_jobs_inputs():
    training = remote_training(6.0)
    manifest = training.manifest(attempt=1)
    job_root = f"/{BUCKET}/{PREFIX}/{training.prefix}"
    writes = [(what, url) for what, url in urls(manifest) if what.startswith("write")]
    assert len(writes) >= 4  # checkpoints, optimizer states, samples, progress and log
    for what, url in writes:
        assert unquote(urlsplit(url).path).startswith(job_root), f"{what} writes outside {job_root}: {url}"
    reads = [unquote(urlsplit(url).path) for what, url in urls(manifest) if what.startswith("read")]
    assert reads == [f"/{BUCKET}/{PREFIX}/sha256/aa/Ada_front.png"]


def test_a_replacement_pod_gets_the_samples_so_far_where_they_decide_when_training_stops():
    def restored(training: RemoteTraining) -> list[str]:
        sample = ArtifactRef(key="sha256/bb/Ada__000000003_0.png", sha256="b" * 64, size=10)
        weights = ArtifactRef(key="sha256/cc/Ada_000000003.safetensors", sha256="c" * 64, size=10)
        training.published[3] = PublishedCheckpoint(
            step=3, loss=0.1, files=(weights,), optimizer=None, samples=(sample,)
        )
        return [
            entry["path"] for entry in training.manifest(attempt=1)["files"] if entry["path"].startswith("training/")
        ]

    # Our trainer rescores them when it resumes, so its count of flat samples goes on where the lost pod's was.
    assert restored(remote_training(6.0, StopWhenFlat(min_step=3, patience=1))) == [
        "training/Ada_000000003.safetensors",
        "training/samples/Ada__000000003_0.png",
    ]
    assert restored(remote_training(6.0)) == ["training/Ada_000000003.safetensors"]

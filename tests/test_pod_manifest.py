"""What a pod is handed: presigned URLs that expire with the pod and write only under its job's prefix.

Fast: URLs are signed locally (the store's region is given, so the SDK asks no server anything).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from likeness.config import PodConfig
from likeness.models.profiles import load_profile
from likeness.storage.artifacts import ArtifactRef
from likeness.storage.s3 import S3Store
from likeness.training.remote import RemoteTraining
from likeness.training.spec import TrainJob

BUCKET, PREFIX = "studio", "likeness"


def remote_training(ttl_hours: float) -> RemoteTraining:
    # Port 9 (discard) on loopback: nothing is sent, the store only signs.
    store = S3Store("http://127.0.0.1:9", "key-id", "secret", BUCKET, PREFIX, region="us-east-1", create_bucket=False)
    profile = load_profile("tiny")
    job = TrainJob(
        name="Ada", trigger="Ada", config=profile.train, model=profile.models["video"], dtype="float32", device="cpu"
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

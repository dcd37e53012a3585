"""The whole tiny run with the artifact store on S3 (SeaweedFS on 127.0.0.1): bytes land in the
bucket, and no secret shows up in the output, the output folder or the Prefect run."""

from __future__ import annotations

import json

import pytest

from likeness.storage.s3 import S3Store
from tests.conftest import cli_env
from tests.prefect_server import api_post
from tests.test_cli_e2e import likeness

# Each runs the real CLI end to end (tens of seconds): `bin/test -m 'not slow'` skips them.
pytestmark = pytest.mark.slow

SECRETS = {"LIKENESS_RUNPOD_API_KEY": "rp-e2e-sentinel-7731", "LIKENESS_HF_TOKEN": "hf_e2e_sentinel_9912"}


def test_a_run_on_s3_keeps_its_bytes_there_and_its_secrets_hidden(
    tmp_path, models_dir, prefect_api, s3_server, face_photo
):
    env = cli_env(tmp_path, models_dir, prefect_api)
    env.update(
        SECRETS,
        LIKENESS_STORE_URI="s3://likeness-e2e/studio",
        LIKENESS_S3_ENDPOINT=s3_server.endpoint,
        LIKENESS_S3_ACCESS_KEY=s3_server.access_key,
        LIKENESS_S3_SECRET_KEY=s3_server.secret_key,
    )
    result = likeness(
        env,
        tmp_path,
        "produce",
        "Ada",
        "--image",
        str(face_photo),
        "--out",
        "out",
        "--verbose",
        "--set",
        "dataset.variations=[front, smile]",
    )
    assert result.returncode == 0, result.stderr[-4000:]

    bucket = S3Store(
        s3_server.endpoint, s3_server.access_key, s3_server.secret_key, bucket="likeness-e2e", prefix="studio"
    )
    keys = bucket.list("sha256/")
    assert any(key.endswith("/front.png") for key in keys)
    assert any(key.endswith("/Ada_000000006.safetensors") for key in keys)
    assert not (tmp_path / "likeness-data" / "store").exists()
    manifest = json.loads((tmp_path / "out" / "likeness.json").read_text())
    shots = ["front", "smile-100", "smile-30", "smile-60"]
    assert sorted(manifest["dataset"]) == [f"Ada_{shot}.{suffix}" for shot in shots for suffix in ("png", "txt")]
    assert {"dataset_manifest.jsonl", "dataset_contact_sheet.png", "masks/Ada_front.png"} <= set(manifest["files"])

    run_id = manifest["last_run"]["flow_run_id"]
    runs = api_post(prefect_api, "/flow_runs/filter", {})
    run_ids = [run["id"] for run in runs if run["id"] == run_id or run["parent_task_run_id"]]
    logs = api_post(prefect_api, "/logs/filter", {"logs": {"flow_run_id": {"any_": run_ids}}})
    assert logs, "the verbose run sent its logs to the server"
    seen = "\n".join(
        [result.stdout, result.stderr, json.dumps(runs), json.dumps(logs)]
        + [
            p.read_text(errors="replace")
            for p in (tmp_path / "out").rglob("*")
            if p.suffix in (".json", ".txt", ".jsonl")
        ]
    )
    for secret in [*SECRETS.values(), s3_server.secret_key]:
        assert secret not in seen

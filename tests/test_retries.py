"""A stage that fails once is retried by Prefect and the run goes on (a real server, a real model)."""

from __future__ import annotations

import json
import urllib.request

from likeness.models.profiles import load_profile
from likeness.storage.artifacts import put_file

TINY = load_profile("tiny")


def test_a_transient_failure_in_a_stage_is_retried(likeness_env, prefect_api, face_photo, tmp_path, monkeypatch):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks import caption

    calls = []
    describe = caption.describe

    def flaky_describe(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: unspecified launch failure")
        return describe(*args, **kwargs)

    monkeypatch.setattr(caption, "describe", flaky_describe)
    reference = put_file(face_photo)

    @flow
    def caption_once():
        stage = caption.caption_image.with_options(retry_delay_seconds=0)
        return stage(reference, "Ada", ["front view", "full body"], TINY.caption, TINY, return_state=True)

    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results"}):
        state = caption_once()

    assert state.is_completed()
    assert state.result().startswith("Ada, front view, full body, ")
    assert len(calls) == 2
    with urllib.request.urlopen(f"{prefect_api}/task_runs/{state.state_details.task_run_id}", timeout=30) as answer:
        assert json.loads(answer.read())["run_count"] == 2

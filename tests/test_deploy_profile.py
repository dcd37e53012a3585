"""The forms' default profile is one the pools' machines run, and a run whose profile they cannot run says which
field of its form to change."""

from __future__ import annotations

import pytest

from deployments.deploy import DeployFailed, form_profile
from likeness.models.profiles import ProfileUnavailable


def test_the_forms_default_to_what_this_machine_runs_or_to_what_deploy_is_told() -> None:
    assert form_profile(None) == (
        "tiny",
        "no CUDA GPU on this machine; give --profile production when the workers have GPUs",
    )
    assert form_profile("production-5b") == ("production-5b", "as --profile says")
    with pytest.raises(DeployFailed, match=r"--profile 'huge' is not one of permissive, production"):
        form_profile("huge")


def test_a_form_run_on_a_machine_that_cannot_run_its_profile_names_the_field_to_change(likeness_env) -> None:
    from flows.stages import DATASET_ROLES, dataset_inputs

    with pytest.raises(ProfileUnavailable) as refused:
        dataset_inputs("Ada", "drop/ada.jpg", "production", None, False, None, None, None, DATASET_ROLES)
    message = str(refused.value)
    assert message.startswith("profile 'production' runs on a CUDA GPU and this machine has none")
    assert "set the run's `profile` field to tiny to run on a CPU worker" in message and "--profile tiny" not in message

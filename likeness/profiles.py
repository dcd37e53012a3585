"""Model profiles: load them, find each role's weights on disk, and check a profile can run here.

`tiny:<role>` sources are built offline by `likeness.tiny` into the models folder; any other source
is a local folder or a Hugging Face repo id, loaded exactly as production loads it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from likeness.config import ROLES, InvalidSettings, ModelProfile, ModelSpec, Role
from likeness.settings import Settings

PROFILES_DIR = Path(__file__).parent / "profiles"


class ProfileUnavailable(RuntimeError):
    """A profile that cannot run on this machine, with the reason and what to do instead."""


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str) -> ModelProfile:
    """A profile by name (`tiny`, `production`, `permissive`) or by the path of a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ProfileUnavailable(
            f"unknown profile {name!r}; known: {', '.join(available_profiles())} (or a path to a .yaml file)"
        )
    try:
        return ModelProfile.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ProfileUnavailable(f"profile {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = InvalidSettings.from_validation_error(exc).problems
        raise InvalidSettings([f"profile {path}: {problem}" for problem in problems]) from None


def device_for(profile: ModelProfile, settings: Settings) -> str:
    return settings.device or profile.device


def model_path(role: Role, profile: ModelProfile, settings: Settings) -> Path:
    """The local folder (or file, for single-file models) holding `role`'s weights."""
    spec = profile.models[role]
    if spec.source.startswith("tiny:"):
        from likeness.tiny import build_tiny_models

        folder = build_tiny_models(settings.resolved_models_dir / "tiny", roles=[spec.source[5:]])[spec.source[5:]]
        return folder / spec.file if spec.file else folder
    local = Path(spec.source).expanduser()
    if local.exists():
        return local / spec.file if spec.file else local
    return _hub_path(role, spec, settings)


def _hub_path(role: Role, spec: ModelSpec, settings: Settings) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    offline = not settings.download_models
    try:
        if spec.file:
            return Path(
                hf_hub_download(spec.source, spec.file, revision=spec.revision, token=token, local_files_only=offline)
            )
        return Path(snapshot_download(spec.source, revision=spec.revision, token=token, local_files_only=offline))
    except LocalEntryNotFoundError:
        raise ProfileUnavailable(
            f"the {role} weights ({spec.source}{'/' + spec.file if spec.file else ''}) are not in the "
            "Hugging Face cache on this machine; set LIKENESS_DOWNLOAD_MODELS=1 (and HF_TOKEN for gated "
            "repos) to download them, or point the profile at a local folder"
        ) from None


def preflight(profile: ModelProfile, settings: Settings) -> None:
    """Fail fast, before any model loads, when the profile cannot run here."""
    if device_for(profile, settings) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ProfileUnavailable(
                f"profile {profile.name!r} runs on a CUDA GPU and this machine has none "
                "(torch.cuda.is_available() is False); use --profile tiny on a CPU, "
                "or run it on a GPU worker"
            )
    for role in ROLES:
        if not profile.models[role].source.startswith("tiny:"):
            model_path(role, profile, settings)

"""Model profiles: load them, find each role's weights on disk, and check a profile can run here.

`tiny:<role>` sources are built offline by `likeness.models.tiny` into the models folder; any other source
is a local folder or a Hugging Face repo id, loaded exactly as production loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from likeness.config import ROLES, InvalidSettings, LoraSpec, ModelProfile, ModelSpec, Role, merge_nested
from likeness.settings import Settings

PROFILES_DIR = Path(__file__).parent / "profiles"


class ProfileUnavailable(RuntimeError):
    """A profile that cannot run on this machine, with the reason and what to do instead."""


def available_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILES_DIR.glob("*.yaml"))


def load_profile(name: str) -> ModelProfile:
    """A profile by name (`tiny`, `production`, `permissive`) or by the path of a YAML file.

    A profile may start from another, `extends: <name or path>`, and state only what differs: its settings
    merge into the other's key by key, except a role's model, which replaces the other's whole (a LoRA and
    scheduler settings belong to the model they were made for).
    """
    path = _profile_path(name, Path())
    try:
        return ModelProfile.model_validate(_profile_data(path, ()))
    except ValidationError as exc:
        problems = InvalidSettings.from_validation_error(exc).problems
        raise InvalidSettings([f"profile {path}: {problem}" for problem in problems]) from None


def _profile_path(name: str, folder: Path) -> Path:
    # A bare name is a shipped profile; a relative path to a YAML file starts from `folder`.
    path = folder / name if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ProfileUnavailable(
            f"unknown profile {name!r}; known: {', '.join(available_profiles())} (or a path to a .yaml file)"
        )
    return path


def _profile_data(path: Path, extended_by: tuple[Path, ...]) -> Any:
    """The YAML of the profile at `path`, with the profile it extends underneath."""
    if path.resolve() in extended_by:
        chain = " -> ".join(str(p) for p in (*reversed(extended_by), path.resolve()))
        raise ProfileUnavailable(f"profiles extend each other in a circle: {chain}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileUnavailable(f"profile {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "extends" not in data:
        return data
    data = dict(data)
    base = _profile_data(_profile_path(str(data.pop("extends")), path.parent), (*extended_by, path.resolve()))
    if not isinstance(base, dict):
        return data
    merged = merge_nested(base, data)
    if isinstance(base.get("models"), dict) and isinstance(data.get("models"), dict):
        merged["models"] = {**base["models"], **data["models"]}
    return merged


def device_for(profile: ModelProfile, settings: Settings) -> str:
    return settings.device or profile.device


def model_path(role: Role, profile: ModelProfile, settings: Settings) -> Path:
    """The local folder (or file, for single-file models) holding `role`'s weights."""
    return spec_path(role, profile.models[role], settings)


def lora_path(role: Role, profile: ModelProfile, settings: Settings) -> Path | None:
    """The local file of the LoRA fused into `role`'s model, or None when it has none."""
    lora = profile.models[role].lora
    return None if lora is None else spec_path(f"{role} LoRA", lora, settings)


def spec_path(what: str, spec: ModelSpec | LoraSpec, settings: Settings) -> Path:
    """The local folder (or file) of one model or LoRA spec; `what` names it in errors."""
    if spec.source.startswith("tiny:"):
        from likeness.models.tiny import build_tiny_models

        folder = build_tiny_models(settings.resolved_models_dir / "tiny", roles=[spec.source[5:]])[spec.source[5:]]
        return folder / spec.file if spec.file else folder
    local = Path(spec.source).expanduser()
    if local.exists():
        return local / spec.file if spec.file else local
    return _hub_path(what, spec, settings)


def _hub_path(what: str, spec: ModelSpec | LoraSpec, settings: Settings) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    offline = not settings.download_models
    try:
        if spec.file:
            return Path(
                hf_hub_download(spec.source, spec.file, revision=spec.revision, token=token, local_files_only=offline)
            )
        return Path(snapshot_download(spec.source, revision=spec.revision, token=token, local_files_only=offline))
    except HFValidationError:
        raise ProfileUnavailable(
            f"the {what} weights ({spec.source}) are neither a folder on this machine nor a Hugging Face repo id"
        ) from None
    except LocalEntryNotFoundError:
        raise ProfileUnavailable(
            f"the {what} weights ({spec.source}{'/' + spec.file if spec.file else ''}) are not in the "
            "Hugging Face cache on this machine; set LIKENESS_DOWNLOAD_MODELS=1 (and HF_TOKEN for gated "
            "repos) to download them, or point the profile at a local folder"
        ) from None


# What to do about a profile this machine cannot run, as the CLI says it; a deployment's form says it its own way.
CPU_ADVICE = "use --profile tiny on a CPU, or run it on a GPU worker"


def preflight(
    profile: ModelProfile, settings: Settings, roles: Iterable[Role] = ROLES, advice: str = CPU_ADVICE
) -> None:
    """Fail fast, before any model loads, when the profile cannot run `roles` here; `advice` says what to change."""
    if device_for(profile, settings) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ProfileUnavailable(
                f"profile {profile.name!r} runs on a CUDA GPU and this machine has none "
                f"(torch.cuda.is_available() is False); {advice}"
            )
    for role in roles:
        if role not in profile.models:
            raise ProfileUnavailable(f"profile {profile.name!r} names no {role} model")
        spec = profile.models[role]
        if not spec.source.startswith("tiny:"):
            model_path(role, profile, settings)
        if spec.lora and not spec.lora.source.startswith("tiny:"):
            lora_path(role, profile, settings)
        if spec.uso and not spec.uso.source.startswith("tiny:"):
            uso_paths(profile, settings)


class UsoPaths(NamedTuple):
    """The local files of a refiner's USO: the DiT LoRA, and the projector and the SigLIP encoder's folder where the
    profile names them (a style reference needs them)."""

    lora: Path
    projector: Path | None
    image_encoder: Path | None


def uso_paths(profile: ModelProfile, settings: Settings) -> UsoPaths:
    """Where the refiner's USO files are on disk (fetched as the profile's other weights are); each error names
    the file it could not find."""
    uso = profile.models["refiner"].uso
    if uso is None:
        raise ProfileUnavailable(f"profile {profile.name!r}: its refiner names no USO files")

    def file(what: str, spec: LoraSpec) -> Path:
        path = spec_path(what, spec, settings)
        if not path.is_file():
            raise ProfileUnavailable(f"the {what} file {path} does not exist; the profile names {uso.source}")
        return path

    projector, encoder = uso.projector_file(), uso.image_encoder_model()
    return UsoPaths(
        lora=file("USO DiT LoRA", uso.lora_file()),
        projector=file("USO projector", projector) if projector else None,
        image_encoder=spec_path("USO image encoder", encoder, settings) if encoder else None,
    )

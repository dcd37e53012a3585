"""A small typed client over the `runpod` SDK for a pod's lifecycle: check the key, price, start, watch, terminate.

No Prefect here: this runs in CLI and flow processes alike. The SDK (1.12.0) speaks GraphQL: it POSTs to
`$RUNPOD_API_BASE_URL/graphql` (read on every call), sends the key as `Authorization: Bearer`, raises
`AuthenticationError` on HTTP 401 and `QueryError` carrying the first GraphQL error's message otherwise. It builds its
queries by pasting arguments into GraphQL string literals unescaped, so every string handed to it here is escaped
first (a start command with a quote in it would otherwise be a syntax error, or worse, a different query).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

log = logging.getLogger(__name__)

CloudType = Literal["SECURE", "COMMUNITY", "ALL"]
KEY_VARIABLE = "LIKENESS_RUNPOD_API_KEY"
# The start of the real API's answers when no machine can take the pod: "...with the requested specifications.
# Please refresh and try again." (on demand), "...with the request specifications. Please try again later." (spot),
# "...with enough disk space.".
NO_CAPACITY = "There are no longer any instances available"
# The SDK's own ValueError when `gpuTypes(input: {id})` comes back empty (runpod/api/ctl_commands.py, get_gpu).
UNKNOWN_GPU = "No GPU found with the specified ID"
# A key without write permission gets this GraphQL error on mutations (HTTP 200, so no AuthenticationError).
REFUSED_MESSAGES = ("unauthorized", "forbidden")
WORKSPACE = "/workspace"
URL_VARIABLE = "RUNPOD_API_BASE_URL"  # the SDK reads it on every call

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Older SDKs sent the key as `?api_key=` and requests quotes the URL in its errors; a header may be echoed too.
_KEY_IN_TEXT = re.compile(r"(api_key=|Bearer\s+)[^\s&'\"]+", re.IGNORECASE)

# The SDK takes its key from the module global `runpod.api_key` (create, stop and terminate accept no key argument)
# and its URL from the environment, so every client in the process shares one lock around setting both and calling.
_SDK_LOCK = threading.Lock()


class RunPodError(RuntimeError):
    """The RunPod API refused or failed a request; `reason` is the API's (or SDK's) own words, without the key."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class RunPodKeyRejected(RunPodError):
    """No API key was given, or RunPod refused the one given."""


class NoGpuAvailable(RunPodError):
    """None of the GPU types asked for could take the pod; `tried` maps each type to why not."""

    def __init__(self, message: str, tried: dict[str, str]):
        super().__init__(message)
        self.tried = tried


class PodRequest(BaseModel):
    """What a pod runs, and the GPU types it may run on, in order of preference."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1)
    image: str = Field(min_length=1)
    gpu_types: list[str] = Field(min_length=1)
    cloud_type: CloudType = "SECURE"
    gpu_count: int = Field(1, ge=1)
    container_disk_gb: int = Field(20, ge=1)
    volume_gb: int = Field(0, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    docker_args: str = ""
    ports: str | None = None  # RunPod's form: "8888/http,22/tcp"

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        # The SDK pastes names into the query as they are; only plain shell names survive that and a container.
        bad = [name for name in env if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not an environment variable name: {', '.join(map(repr, bad))}")
        return env


class Pod(BaseModel):
    """A pod just started: its GPU and the hourly price the API reports for it."""

    id: str
    name: str
    gpu_type: str
    cost_per_hr: float
    started_at: float  # epoch seconds, when the API accepted the pod


class PodStatus(BaseModel):
    """A pod as the API sees it now."""

    id: str
    name: str
    desired_status: str  # RUNNING, EXITED, TERMINATED, ...
    is_running: bool  # desired RUNNING and its container is up (the API reports a runtime)
    uptime_s: int
    cost_per_hr: float


class RunPodClient:
    """One RunPod account's pods, through the SDK; safe to share between threads (calls take turns).

    Code elsewhere in the process that sets `runpod.api_key` itself, outside this module's lock, can still race it.
    """

    def __init__(self, api_key: SecretStr | str | None, api_base_url: str | None = None):
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key or not key.strip():
            raise RunPodKeyRejected(f"No RunPod API key: set {KEY_VARIABLE}.")
        self._key = SecretStr(key.strip())
        self._api_base_url = api_base_url

    def __repr__(self) -> str:
        return f"RunPodClient(api_base_url={self._api_base_url!r})"

    def check_key(self) -> None:
        """Make one cheap authenticated query; RunPodKeyRejected if RunPod does not take the key."""
        user = self._sdk("check the API key", "get_user")
        if not user:  # `myself: null`: how the API answered runpodctl's requests without a key (runpodctl #46)
            raise RunPodKeyRejected(f"RunPod did not recognise the API key: set {KEY_VARIABLE} to a valid key.")

    def gpu_prices(
        self, gpu_types: Sequence[str], cloud_type: CloudType = "SECURE", gpu_count: int = 1
    ) -> dict[str, float]:
        """The API's on-demand price per GPU per hour on `cloud_type`; types it does not price there are left out."""
        prices: dict[str, float] = {}
        for gpu_type in gpu_types:
            try:
                gpu = self._sdk(f"price {gpu_type}", "get_gpu", _gql(gpu_type), gpu_count)
            except RunPodError as error:
                if not error.reason.startswith(UNKNOWN_GPU):
                    raise
                log.warning("RunPod has no GPU type %r", gpu_type)
                continue
            price = _price(gpu, cloud_type)
            if price:
                prices[gpu_type] = price
        return prices

    def start_pod(self, request: PodRequest) -> Pod:
        """Start the pod on the first GPU type that has room; NoGpuAvailable (with every type's reason) if none."""
        tried: dict[str, str] = {}
        for gpu_type in request.gpu_types:
            try:
                created = self._sdk(
                    f"start pod {request.name} on {gpu_type}",
                    "create_pod",
                    name=_gql(request.name),
                    image_name=_gql(request.image),
                    gpu_type_id=_gql(gpu_type),
                    cloud_type=request.cloud_type,
                    gpu_count=request.gpu_count,
                    volume_in_gb=request.volume_gb,
                    container_disk_in_gb=request.container_disk_gb,
                    docker_args=_gql(request.docker_args),
                    ports=None if request.ports is None else _gql(request.ports),
                    volume_mount_path=WORKSPACE,
                    env={name: _gql(value) for name, value in request.env.items()},
                )
            except RunPodError as error:
                if error.reason.startswith(NO_CAPACITY):
                    tried[gpu_type] = f"none available: {error.reason}"
                elif error.reason.startswith(UNKNOWN_GPU):
                    tried[gpu_type] = "RunPod has no GPU type of that name"
                else:
                    raise
                log.info("pod %s: %s on %s cloud: %s", request.name, gpu_type, request.cloud_type, tried[gpu_type])
                continue
            return self._started(created["id"], request, gpu_type)
        reasons = "; ".join(f"{gpu_type}: {reason}" for gpu_type, reason in tried.items())
        raise NoGpuAvailable(f"No GPU for pod {request.name} on {request.cloud_type} cloud. Tried {reasons}", tried)

    def status(self, pod_id: str) -> PodStatus | None:
        """The pod's status now, or None if the account has no such pod (never had it, or it was terminated)."""
        pod = self._sdk(f"read the status of pod {pod_id}", "get_pod", _gql(pod_id))
        return None if pod is None else _status(pod)

    def terminate(self, pod_id: str) -> None:
        """Terminate the pod (its disks go with it); a pod already gone is fine."""
        try:
            self._sdk(f"terminate pod {pod_id}", "terminate_pod", _gql(pod_id))
        except RunPodKeyRejected:
            raise
        except RunPodError:
            # What the API answers for a pod that is already gone is not documented: ask whether it is still there.
            status = self.status(pod_id)
            if status is not None and status.desired_status != "TERMINATED":
                raise
            log.info("pod %s: already gone", pod_id)
            return
        log.info("pod %s terminated", pod_id)

    def pods(self, name_prefix: str = "likeness-") -> list[PodStatus]:
        """The account's pods whose name starts with `name_prefix` (ours), whatever their state."""
        pods = self._sdk("list pods", "get_pods")
        return [_status(pod) for pod in pods if pod["name"].startswith(name_prefix)]

    def _started(self, pod_id: str, request: PodRequest, gpu_type: str) -> Pod:
        started_at = time.time()
        try:
            status = self.status(pod_id)  # the create mutation's answer has no price
            if status is None:
                raise RunPodError(f"pod {pod_id} ({request.name}) was gone right after it was created")
        except RunPodError:
            # A pod nobody tracks bills until someone notices it: take it down before giving up.
            with suppress(RunPodError):
                self.terminate(pod_id)
            raise
        log.info("pod %s (%s) started on %s at $%.2f/h", pod_id, request.name, gpu_type, status.cost_per_hr)
        return Pod(
            id=pod_id, name=request.name, gpu_type=gpu_type, cost_per_hr=status.cost_per_hr, started_at=started_at
        )

    def _sdk(self, operation: str, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call the SDK's `function` with this client's key and URL, turning its errors into RunPodError (no key)."""
        with _SDK_LOCK, self._sdk_settings() as sdk:
            try:
                return getattr(sdk, function)(*args, **kwargs)
            except sdk.error.AuthenticationError as error:
                raise RunPodKeyRejected(
                    f"RunPod refused the API key (asked to {operation}): set {KEY_VARIABLE} to a valid RunPod API key.",
                    self._scrub(str(error)),
                ) from None
            except sdk.error.QueryError as error:
                reason = self._scrub(str(error))
                if reason.strip().lower() in REFUSED_MESSAGES:
                    raise RunPodKeyRejected(
                        f"RunPod refused to {operation} with this API key ({reason}): set {KEY_VARIABLE} to a key "
                        "with Read/Write permission.",
                        reason,
                    ) from None
                raise RunPodError(f"RunPod could not {operation}: {reason}", reason) from None
            # requests' errors (unreachable, timed out, not JSON) are OSErrors; the SDK's own checks raise ValueError,
            # and an answer without the expected data surfaces as KeyError or TypeError.
            except (OSError, ValueError, KeyError, TypeError) as error:
                reason = self._scrub(str(error))
                raise RunPodError(f"RunPod could not {operation}: {type(error).__name__}: {reason}", reason) from None

    @contextmanager
    def _sdk_settings(self) -> Iterator[ModuleType]:
        """The SDK, with this client's key and URL set until the block ends (call it holding the lock)."""
        sdk = _runpod()
        # Put back what was there, so the key does not linger in the SDK's global between calls.
        previous_key, previous_url = sdk.api_key, os.environ.get(URL_VARIABLE)
        sdk.api_key = self._key.get_secret_value()
        if self._api_base_url is not None:
            os.environ[URL_VARIABLE] = self._api_base_url
        try:
            yield sdk
        finally:
            sdk.api_key = previous_key
            if self._api_base_url is not None:
                if previous_url is None:
                    os.environ.pop(URL_VARIABLE, None)
                else:
                    os.environ[URL_VARIABLE] = previous_url

    def _scrub(self, text: str) -> str:
        return _KEY_IN_TEXT.sub(r"\1***", text.replace(self._key.get_secret_value(), "***"))


@functools.cache
def _runpod() -> ModuleType:
    """The SDK, imported on first use (it takes seconds) and without the root log handler its import installs."""
    # runpod/serverless/utils/rp_upload.py calls logging.basicConfig(level=INFO) when the SDK is imported: every
    # record of the process would then also go to stderr, past whatever console the CLI or Prefect set up.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import runpod
    import runpod.error

    root.handlers[:] = handlers
    root.setLevel(level)
    return runpod


def _gql(text: str) -> str:
    """`text` escaped for the inside of a GraphQL string literal (JSON's escapes are GraphQL's)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _price(gpu: dict[str, Any], cloud_type: CloudType) -> float | None:
    if cloud_type == "SECURE":
        return gpu.get("securePrice")
    if cloud_type == "COMMUNITY":
        return gpu.get("communityPrice")
    return (gpu.get("lowestPrice") or {}).get("uninterruptablePrice")


def _status(pod: dict[str, Any]) -> PodStatus:
    return PodStatus(
        id=pod["id"],
        name=pod["name"],
        desired_status=pod["desiredStatus"],
        is_running=pod["desiredStatus"] == "RUNNING" and pod.get("runtime") is not None,
        uptime_s=pod.get("uptimeSeconds") or 0,
        cost_per_hr=pod.get("costPerHr") or 0.0,
    )

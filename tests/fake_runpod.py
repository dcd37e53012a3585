"""A fake RunPod API on 127.0.0.1 whose pods really run, for tests through the real `runpod` SDK.

It answers the GraphQL that the SDK (1.12.0) sends for a pod's lifecycle: `gpuTypes`, `myself` (the user and its
`pods`), `pod(input: {podId})`, `podFindAndDeployOnDemand`, `podStop` and `podTerminate`. Each query is parsed and
checked against the fields the real schema has, and only the selected fields come back, so a misspelt field or a
quote the SDK pasted in unescaped fails here as it would there.

Auth: the key comes as `Authorization: Bearer KEY` (the SDK) or `?api_key=KEY` (older clients). A key that is not
the account's gets HTTP 401, the one answer the SDK singles out (AuthenticationError). A read-only key may query, but
its mutations answer the GraphQL error "Unauthorized", as users of read-only keys report. With no key at all,
`myself` is null (as runpodctl users saw) and only `gpuTypes` can be read (a guess; the SDK never sends no key).

The pod key: RunPod's docs say every pod comes with runpodctl and "a Pod-scoped API key" (runpodctl reads it from
`RUNPOD_API_KEY`), and show a pod stopping or removing itself with `runpodctl stop pod $RUNPOD_POD_ID` /
`runpodctl remove pod ...`; what else that key may do is not documented. Assumed here, the strictest reading: it may
read its own pod (`pod`), stop it (`podStop`) and terminate it (`podTerminate`), and nothing else: any other field
(`myself`, `gpuTypes`, creating a pod, another pod) answers the GraphQL error "Unauthorized" (HTTP 200), as a
read-only key's mutations do. Once its pod is terminated the key acts on nothing. `terminations` records who ended
each pod, and when it was asked (a record is added once the pod's processes and folder are gone).

Pods: creating one starts `bash -c DOCKER_ARGS` (with no start command, an idle `sleep infinity`, as RunPod's base
images end) in a new process group, in a fresh folder that stands for `/workspace` (so start commands should use
relative paths), with the pod's env over the image's extra env, what RunPod adds (`RUNPOD_POD_ID`, the pod's own key
in `RUNPOD_API_KEY`; and `RUNPOD_API_BASE_URL`, this fake's URL, where a real pod would use the default API), and
PATH with this venv's bin first; its output goes to `pod.log` in that folder. As on RunPod, a container whose command
exits is started again (after RESTART_DELAY_S) for as long as the pod is meant to run. Terminating kills the process
group (SIGTERM, SIGKILL after 2 s) and deletes the pod and its folder, as RunPod deletes its disks (the log is kept
for post-mortems, see `log()`); stopping kills it the same way but keeps the pod, EXITED.

`lose(pod_id)` is a machine lost: the pod's processes are SIGKILLed and the pod stays on the account, EXITED and
without a runtime, until someone terminates it.

    with fake_runpod(gpus=[FakeGpu("NVIDIA H100 80GB HBM3", 2.99)]) as api:   # sets RUNPOD_API_BASE_URL
        ...   # at the end, any pod still on the account is an AssertionError (after it is terminated)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

DEFAULT_KEY = "rp-fake-account-key"
URL_VARIABLE = "RUNPOD_API_BASE_URL"
# The real API's answer when no machine can take the pod (seen in runpod-python, runpodctl and dstack issues).
NO_CAPACITY = (
    "There are no longer any instances available with the requested specifications. Please refresh and try again."
)
# Not documented anywhere we could find: what the real API says when asked to terminate a pod it does not have.
NO_SUCH_POD = "Pod not found"
LOG_NAME = "pod.log"
RESTART_DELAY_S = 1.0
TERMINATE_GRACE_S = 2.0
IDLE_COMMAND = "sleep infinity"

Access = Literal["full", "read_only", "anonymous", "pod"]
_UNAUTHORIZED = {"errors": [{"message": "Unauthorized"}]}
# What a pod's own key may do, and only to its own pod.
POD_KEY_FIELDS = frozenset({"pod", "podStop", "podTerminate"})


@dataclass(frozen=True)
class _Caller:
    access: Access
    pod_id: str | None = None  # for a pod key: its pod


@dataclass(frozen=True)
class Termination:
    """A pod terminated: by the account's key or by its own (`by` is "account" or "pod"), at `at` (epoch s)."""

    pod_id: str
    by: str
    at: float


@dataclass(frozen=True)
class FakeGpu:
    """A GPU type on the fake: its secure-cloud price per GPU-hour, and its community price if it is offered there."""

    id: str
    price: float
    available: bool = True
    community_price: float | None = None
    memory_gb: int = 80


@dataclass(frozen=True)
class CreateRequest:
    """One `podFindAndDeployOnDemand` as the fake received it, and what came of it."""

    name: str
    image: str
    gpu_type: str
    cloud_type: str
    gpu_count: int
    env: dict[str, str]
    docker_args: str
    pod_id: str | None  # None when refused
    error: str | None


@dataclass(frozen=True)
class FakePod:
    """A snapshot of one pod on the account."""

    id: str
    name: str
    image: str
    gpu: str
    gpu_count: int
    cloud_type: str
    cost_per_hr: float
    env: dict[str, str]
    docker_args: str
    status: str  # desiredStatus: RUNNING, or EXITED once lost or stopped
    running: bool  # its container's command is running now
    restarts: int
    folder: Path
    pod_key: str  # the pod-scoped key RunPod puts in the pod's RUNPOD_API_KEY
    container_env: dict[str, str]  # the whole environment its container's command got


@dataclass(eq=False)
class _Pod:
    id: str
    name: str
    image: str
    gpu: FakeGpu
    gpu_count: int
    cloud_type: str
    cost_per_hr: float
    env: dict[str, str]
    docker_args: str
    ports: str | None
    spec: dict[str, Any]
    folder: Path
    machine_id: str
    created_at: float
    pod_key: str
    status: str = "RUNNING"
    container_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    container_started: float = 0.0
    restarts: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def running(self) -> bool:
        return self.status == "RUNNING" and self.process is not None and self.process.returncode is None


class FakeRunPod:
    """The fake API and the account behind it; `start()`/`stop()` or use it as a context manager."""

    def __init__(
        self,
        api_key: str = DEFAULT_KEY,
        gpus: Iterable[FakeGpu] | None = None,
        images: dict[str, dict[str, str]] | None = None,
        root: Path | None = None,
        read_only_keys: Iterable[str] = (),
    ):
        self.api_key = api_key
        self.read_only_keys = frozenset(read_only_keys)
        default_gpus = [FakeGpu("NVIDIA H100 80GB HBM3", 2.99), FakeGpu("NVIDIA A100 80GB PCIe", 1.64, True, 1.19)]
        self._gpus = {gpu.id: gpu for gpu in (default_gpus if gpus is None else gpus)}
        self._images = dict(images or {})
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="fake-runpod-")) if root is None else Path(root)
        self.created: list[CreateRequest] = []  # every create a full key asked for, those refused for capacity too
        self.calls: list[str] = []  # each request's operation name, or its root fields when it has none
        self.terminations: list[Termination] = []
        # False: new pods get no key of their own (a pod that cannot end itself, left to the sweeper).
        self.pod_keys = True
        self._pods: dict[str, _Pod] = {}
        self._pod_keys: dict[str, str] = {}  # a pod's own key -> its pod's id (kept after the pod is gone)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """The base URL to put in RUNPOD_API_BASE_URL (the SDK appends /graphql)."""
        if self._server is None:
            raise RuntimeError("the fake RunPod API is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeRunPod:
        """Listen on a free port of 127.0.0.1."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.api = self  # type: ignore[attr-defined]
        # A short poll interval: `shutdown()` waits for one, and every test stops a fake.
        serve = functools.partial(server.serve_forever, poll_interval=0.02)
        threading.Thread(target=serve, name="fake-runpod-api", daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        """Kill every pod's processes and stop listening; the root folder goes too unless it was given."""
        with self._lock:
            pods = list(self._pods.values())
            self._pods.clear()
        for pod in pods:
            _end(pod, grace_s=0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_available(self, gpu_id: str, available: bool) -> None:
        """Whether new pods can get this GPU type (pods already on it keep running)."""
        with self._lock:
            self._gpus[gpu_id] = dataclasses.replace(self._gpus[gpu_id], available=available)

    def lose(self, pod_id: str) -> None:
        """The pod's machine is lost: its processes die at once; the pod stays on the account, EXITED."""
        with self._lock:
            pod = self._pods[pod_id]
            pod.status = "EXITED"
        _end(pod, grace_s=0)

    def pods(self) -> list[FakePod]:
        """Every pod on the account (terminated ones are gone)."""
        with self._lock:
            return [_snapshot(pod) for pod in self._pods.values()]

    def alive(self) -> list[str]:
        """The ids of the pods whose command is running now."""
        with self._lock:
            return [pod.id for pod in self._pods.values() if pod.running()]

    def log(self, pod_id: str) -> str:
        """What the pod's command printed, live or after the pod was terminated."""
        for path in (self.root / "pods" / pod_id / LOG_NAME, self.root / "logs" / f"{pod_id}.log"):
            if path.exists():
                return path.read_text(errors="replace")
        raise KeyError(pod_id)

    def answer(self, query: str, key: str | None) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body for one GraphQL request made with `key`."""
        try:
            operation, name, fields = _Parser(query).document()
        except GraphQLError as error:
            self._record("<syntax error>")
            # A wrong key is refused whatever the query is.
            return (401, _UNAUTHORIZED) if self._access(key) is None else (400, error.body("GRAPHQL_PARSE_FAILED"))
        self._record(name or ",".join(f.name for f in fields))
        access = self._access(key)
        if access is None:
            return 401, _UNAUTHORIZED
        root_type = "Mutation" if operation == "mutation" else "Query"
        try:
            _validate(fields, root_type)
        except GraphQLError as error:
            return 400, error.body("GRAPHQL_VALIDATION_FAILED")
        return 200, self._execute(root_type, fields, access)

    def _record(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)

    def _access(self, key: str | None) -> _Caller | None:
        if key is None:
            return _Caller("anonymous")
        if key == self.api_key:
            return _Caller("full")
        if key in self.read_only_keys:
            return _Caller("read_only")
        with self._lock:
            pod_id = self._pod_keys.get(key)
        return None if pod_id is None else _Caller("pod", pod_id)

    def _execute(self, root_type: str, fields: list[_Field], caller: _Caller) -> dict[str, Any]:
        resolvers: dict[str, Callable[[dict[str, Any], _Caller], Any]] = {
            "myself": self._myself,
            "gpuTypes": self._gpu_types,
            "pod": self._pod,
            "podFindAndDeployOnDemand": self._deploy,
            "podStop": self._stop,
            "podTerminate": self._terminate,
        }
        data: dict[str, Any] = {}
        errors: list[dict[str, Any]] = []
        for f in fields:
            try:
                if caller.access == "pod":
                    # Its own pod, and only to read, stop or terminate it.
                    if f.name not in POD_KEY_FIELDS or (f.args.get("input") or {}).get("podId") != caller.pod_id:
                        raise GraphQLError("Unauthorized")
                elif root_type == "Mutation" and caller.access != "full":
                    raise GraphQLError("Unauthorized")
                value = resolvers[f.name](f.args, caller)
                data[f.alias] = value if f.selections is None else _select(value, f.selections)
            except GraphQLError as error:
                data[f.alias] = None
                errors.append({"message": error.message, "path": [f.alias]})
        return {"data": data, "errors": errors} if errors else {"data": data}

    def _myself(self, args: dict[str, Any], caller: _Caller) -> dict[str, Any] | None:
        if caller.access == "anonymous":
            return None
        with self._lock:
            pods = [self._pod_view(pod) for pod in self._pods.values()]
        return {"id": "user_fake", "pubKey": "", "networkVolumes": [], "pods": pods}

    def _gpu_types(self, args: dict[str, Any], caller: _Caller) -> list[dict[str, Any]]:
        wanted = (args.get("input") or {}).get("id")
        with self._lock:
            return [_gpu_view(gpu) for gpu in self._gpus.values() if wanted in (None, gpu.id)]

    def _pod(self, args: dict[str, Any], caller: _Caller) -> dict[str, Any] | None:
        if caller.access == "anonymous":
            raise GraphQLError("Unauthorized")
        with self._lock:
            pod = self._pods.get((args.get("input") or {}).get("podId"))
            return None if pod is None else self._pod_view(pod)

    def _deploy(self, args: dict[str, Any], caller: _Caller) -> dict[str, Any]:
        spec = args.get("input") or {}
        env = {item["key"]: item["value"] for item in spec.get("env") or []}
        gpu_type, cloud_type = spec.get("gpuTypeId", ""), spec.get("cloudType", "ALL")
        gpu_count = spec.get("gpuCount", 1)
        with self._lock:
            gpu = self._gpus.get(gpu_type)
            price = _offer(gpu, cloud_type)
            pod = None if gpu is None or price is None else self._launch(spec, gpu, price * gpu_count, env)
            self.created.append(
                CreateRequest(
                    name=spec.get("name", ""),
                    image=spec.get("imageName", ""),
                    gpu_type=gpu_type,
                    cloud_type=cloud_type,
                    gpu_count=gpu_count,
                    env=env,
                    docker_args=spec.get("dockerArgs", ""),
                    pod_id=None if pod is None else pod.id,
                    error=NO_CAPACITY if pod is None else None,
                )
            )
            if pod is None:
                raise GraphQLError(NO_CAPACITY)
            return self._pod_view(pod)

    def _stop(self, args: dict[str, Any], caller: _Caller) -> dict[str, Any]:
        """The pod's container ends; the pod stays on the account, EXITED (its disk still billed)."""
        with self._lock:
            pod = self._pods.get((args.get("input") or {}).get("podId"))
            if pod is None:
                raise GraphQLError(NO_SUCH_POD)
            pod.status = "EXITED"
        _end(pod, grace_s=TERMINATE_GRACE_S)
        return self._pod_view(pod)

    def _terminate(self, args: dict[str, Any], caller: _Caller) -> None:
        pod_id = (args.get("input") or {}).get("podId")
        asked_at = time.time()
        with self._lock:
            pod = self._pods.pop(pod_id, None)
        if pod is None:
            raise GraphQLError(NO_SUCH_POD)
        _end(pod, grace_s=TERMINATE_GRACE_S)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.move(pod.folder / LOG_NAME, logs / f"{pod.id}.log")
        shutil.rmtree(pod.folder, ignore_errors=True)
        with self._lock:  # once it is all gone, stamped with when it was asked for
            self.terminations.append(Termination(pod.id, "pod" if caller.access == "pod" else "account", asked_at))

    def _launch(self, spec: dict[str, Any], gpu: FakeGpu, cost_per_hr: float, env: dict[str, str]) -> _Pod:
        pod_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(14))
        folder = self.root / "pods" / pod_id
        folder.mkdir(parents=True)
        pod = _Pod(
            id=pod_id,
            name=spec.get("name", ""),
            image=spec.get("imageName", ""),
            gpu=gpu,
            gpu_count=spec.get("gpuCount", 1),
            cloud_type=spec.get("cloudType", "ALL"),
            cost_per_hr=round(cost_per_hr, 4),
            env=env,
            docker_args=spec.get("dockerArgs", ""),
            ports=spec.get("ports"),
            spec=spec,
            folder=folder,
            machine_id=secrets.token_hex(6),
            created_at=time.time(),
            pod_key=f"rp-pod-{secrets.token_hex(12)}",
        )
        self._pods[pod_id] = pod
        self._pod_keys[pod.pod_key] = pod_id
        self._run_container(pod)
        return pod

    def _run_container(self, pod: _Pod) -> None:
        env = {
            **self._images.get(pod.image, {}),
            **pod.env,
            "RUNPOD_POD_ID": pod.id,
            **({"RUNPOD_API_KEY": pod.pod_key} if self.pod_keys else {}),
            URL_VARIABLE: self.url,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]),
        }
        pod.container_env = env
        with open(pod.folder / LOG_NAME, "ab") as log:
            pod.process = subprocess.Popen(
                ["bash", "-c", pod.docker_args or IDLE_COMMAND],
                cwd=pod.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pod.container_started = time.time()
        threading.Thread(target=self._watch, args=(pod, pod.process), name=f"fake-pod-{pod.id}", daemon=True).start()

    def _watch(self, pod: _Pod, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        _signal_group(process, signal.SIGKILL)  # a container's other processes end with its main one
        if pod.ended.wait(RESTART_DELAY_S):
            return
        with self._lock:
            if self._pods.get(pod.id) is pod and pod.status == "RUNNING" and pod.process is process:
                pod.restarts += 1
                self._run_container(pod)

    def _pod_view(self, pod: _Pod) -> dict[str, Any]:
        running = pod.running()
        uptime = int(time.time() - pod.container_started) if running else 0
        return {
            "id": pod.id,
            "name": pod.name,
            "imageName": pod.image,
            "env": [f"{name}={value}" for name, value in pod.env.items()],
            "machineId": pod.machine_id,
            "machine": {"podHostId": f"{pod.id}-{pod.machine_id[:8]}", "gpuDisplayName": _display_name(pod.gpu)},
            "containerDiskInGb": pod.spec.get("containerDiskInGb"),
            "costPerHr": pod.cost_per_hr,
            "desiredStatus": pod.status,
            "dockerArgs": pod.docker_args,
            "dockerId": None,
            "gpuCount": pod.gpu_count,
            "lastStatusChange": time.strftime(
                "Rented by User: %a %b %d %Y %H:%M:%S GMT+0000", time.gmtime(pod.created_at)
            ),
            "memoryInGb": pod.spec.get("minMemoryInGb", 1),
            "podType": "RESERVED",
            "port": None,
            "ports": pod.ports,
            "uptimeSeconds": uptime,
            "vcpuCount": pod.spec.get("minVcpuCount", 1),
            "volumeInGb": pod.spec.get("volumeInGb", 0),
            "volumeMountPath": pod.spec.get("volumeMountPath"),
            "runtime": {"uptimeInSeconds": uptime, "ports": []} if running else None,
        }


@contextlib.contextmanager
def fake_runpod(
    api_key: str = DEFAULT_KEY,
    gpus: Iterable[FakeGpu] | None = None,
    images: dict[str, dict[str, str]] | None = None,
    root: Path | None = None,
    read_only_keys: Iterable[str] = (),
) -> Iterator[FakeRunPod]:
    """A started fake with RUNPOD_API_BASE_URL pointing at it; any pod left on the account is an AssertionError."""
    previous = os.environ.get(URL_VARIABLE)
    with FakeRunPod(api_key, gpus, images, root, read_only_keys) as api:
        os.environ[URL_VARIABLE] = api.url
        try:
            yield api
            leaked = api.pods()
        finally:
            if previous is None:
                os.environ.pop(URL_VARIABLE, None)
            else:
                os.environ[URL_VARIABLE] = previous
    # Leaving the `with` terminated them; a pod that is only EXITED still bills for its disk, so it counts.
    if leaked:
        names = ", ".join(f"{pod.id} ({pod.name}, {pod.status})" for pod in leaked)
        raise AssertionError(f"pods left on the fake RunPod account: {names}")


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/graphql":
            self._send(404, {"errors": [{"message": f"no route {url.path}"}]})
            return
        try:
            query = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))["query"]
        except (ValueError, KeyError, TypeError):
            self._send(400, {"errors": [{"message": "POST body must be JSON with a GraphQL query"}]})
            return
        authorization = self.headers.get("Authorization") or ""
        key = authorization.removeprefix("Bearer ").strip() or parse_qs(url.query).get("api_key", [None])[0]
        self._send(*self.server.api.answer(query, key))  # type: ignore[attr-defined]

    def _send(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        try:
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a pod that terminated itself is gone before its answer

    def log_message(self, *args: Any) -> None:
        pass  # tests read `.calls`; one stderr line per request is noise


class GraphQLError(Exception):
    """A GraphQL error, as `{"errors": [{"message": ...}]}`."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def body(self, code: str) -> dict[str, Any]:
        return {"errors": [{"message": self.message, "extensions": {"code": code}}]}


# Only what the SDK's pod queries ask for: each type's fields, mapped to the object type they hold (None: a scalar).
_SCHEMA: dict[str, dict[str, str | None]] = {
    "Query": {"myself": "User", "gpuTypes": "GpuType", "pod": "Pod"},
    "Mutation": {"podFindAndDeployOnDemand": "Pod", "podStop": "Pod", "podTerminate": None},
    "User": {"id": None, "pubKey": None, "networkVolumes": "NetworkVolume", "pods": "Pod"},
    "NetworkVolume": dict.fromkeys(["id", "name", "size", "dataCenterId"]),
    "GpuType": {
        **dict.fromkeys(
            "maxGpuCount id displayName manufacturer memoryInGb cudaCores secureCloud communityCloud securePrice "
            "communityPrice oneMonthPrice threeMonthPrice oneWeekPrice communitySpotPrice secureSpotPrice".split()
        ),
        "lowestPrice": "LowestPrice",
    },
    "LowestPrice": dict.fromkeys(["minimumBidPrice", "uninterruptablePrice"]),
    "Pod": {
        **dict.fromkeys(
            "id containerDiskInGb costPerHr desiredStatus dockerArgs dockerId env gpuCount imageName lastStatusChange "
            "machineId memoryInGb name podType port ports uptimeSeconds vcpuCount volumeInGb volumeMountPath".split()
        ),
        "runtime": "PodRuntime",
        "machine": "PodMachineInfo",
    },
    "PodRuntime": {"uptimeInSeconds": None, "ports": "Port"},
    "Port": dict.fromkeys(["ip", "isIpPublic", "privatePort", "publicPort", "type"]),
    "PodMachineInfo": dict.fromkeys(["gpuDisplayName", "podHostId"]),
}


@dataclass(frozen=True)
class _Field:
    alias: str
    name: str
    args: dict[str, Any]
    selections: list[_Field] | None


def _validate(fields: list[_Field], type_name: str) -> None:
    for f in fields:
        if f.name not in _SCHEMA[type_name]:
            raise GraphQLError(f'Cannot query field "{f.name}" on type "{type_name}".')
        field_type = _SCHEMA[type_name][f.name]
        if field_type is None and f.selections is not None:
            raise GraphQLError(f'Field "{f.name}" must not have a selection since its type has no subfields.')
        if field_type is not None:
            if f.selections is None:
                raise GraphQLError(f'Field "{f.name}" of type "{field_type}" must have a selection of subfields.')
            _validate(f.selections, field_type)


def _select(value: Any, fields: list[_Field]) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_select(item, fields) for item in value]
    selected = {}
    for f in fields:
        field_value = value[f.name]
        if callable(field_value):  # a field that takes arguments
            field_value = field_value(f.args)
        selected[f.alias] = field_value if f.selections is None else _select(field_value, f.selections)
    return selected


_TOKEN = re.compile(
    r"(?P<skip>[\s,\ufeff]+|#[^\n\r]*)"
    r"|(?P<punct>\.\.\.|[!$&():=@\[\]{|}])"
    r"|(?P<name>[_A-Za-z][_0-9A-Za-z]*)"
    r"|(?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    # A line break inside a string literal is a syntax error in GraphQL, as in JSON.
    r'|(?P<string>"(?:[^"\\\n\r]|\\(?:["\\/bfnrt]|u[0-9A-Fa-f]{4}))*")'
)


class _Parser:
    """GraphQL's executable subset the SDK uses: one operation, fields, aliases, literal arguments; no variables."""

    def __init__(self, source: str):
        self._tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(source):
            match = _TOKEN.match(source, position)
            if match is None:
                if source[position] == '"':
                    raise GraphQLError("Syntax Error: Unterminated string.")
                raise GraphQLError(f"Syntax Error: Unexpected character: {source[position]!r}.")
            position = match.end()
            if match.lastgroup != "skip":
                self._tokens.append((match.lastgroup or "", match.group()))
        self._tokens.append(("eof", "<EOF>"))
        self._at = 0

    def document(self) -> tuple[str, str | None, list[_Field]]:
        operation, name = "query", None
        if self._peek() in ("query", "mutation"):
            operation = self._take()
            if self._tokens[self._at][0] == "name":
                name = self._take()
        fields = self._selection_set()
        self._take("eof")
        return operation, name, fields

    def _peek(self) -> str:
        return self._tokens[self._at][1]

    def _take(self, kind: str | None = None, text: str | None = None) -> str:
        token_kind, token = self._tokens[self._at]
        if (kind is not None and token_kind != kind) or (text is not None and token != text):
            raise GraphQLError(f"Syntax Error: Expected {text or kind}, found {token}.")
        self._at += 1
        return token

    def _selection_set(self) -> list[_Field]:
        self._take("punct", "{")
        fields = [self._field()]
        while self._peek() != "}":
            fields.append(self._field())
        self._take("punct", "}")
        return fields

    def _field(self) -> _Field:
        alias = name = self._take("name")
        if self._peek() == ":":
            self._take()
            name = self._take("name")
        args: dict[str, Any] = {}
        if self._peek() == "(":
            self._take()
            while self._peek() != ")":
                key = self._take("name")
                self._take("punct", ":")
                args[key] = self._value()
            self._take("punct", ")")
        selections = self._selection_set() if self._peek() == "{" else None
        return _Field(alias, name, args, selections)

    def _value(self) -> Any:
        kind, token = self._tokens[self._at]
        if kind == "string":
            self._at += 1
            return json.loads(token)
        if kind == "number":
            self._at += 1
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "name":  # true, false, null, or an enum value such as SECURE
            self._at += 1
            return {"true": True, "false": False, "null": None}.get(token, token)
        if token == "[":
            self._take()
            items = []
            while self._peek() != "]":
                items.append(self._value())
            self._take()
            return items
        if token == "{":
            self._take()
            value: dict[str, Any] = {}
            while self._peek() != "}":
                key = self._take("name")
                self._take("punct", ":")
                value[key] = self._value()
            self._take()
            return value
        raise GraphQLError(f"Syntax Error: Unexpected {token}.")


def _offer(gpu: FakeGpu | None, cloud_type: str) -> float | None:
    """The price per GPU-hour a new pod gets on `cloud_type`, or None if no machine there can take it."""
    if gpu is None or not gpu.available:
        return None
    if cloud_type == "SECURE":
        return gpu.price
    if cloud_type == "COMMUNITY":
        return gpu.community_price
    return min(price for price in (gpu.price, gpu.community_price) if price is not None)


def _display_name(gpu: FakeGpu) -> str:
    return gpu.id.removeprefix("NVIDIA ").removeprefix("GeForce ")


def _gpu_view(gpu: FakeGpu) -> dict[str, Any]:
    lowest = min(price for price in (gpu.price, gpu.community_price) if price is not None)
    return {
        "id": gpu.id,
        "displayName": _display_name(gpu),
        "manufacturer": "Nvidia",
        "memoryInGb": gpu.memory_gb,
        "maxGpuCount": 8,
        "cudaCores": 0,
        "secureCloud": True,
        "communityCloud": gpu.community_price is not None,
        "securePrice": gpu.price,
        "communityPrice": gpu.community_price,
        # Reserved and spot prices are not modelled.
        "oneWeekPrice": None,
        "oneMonthPrice": None,
        "threeMonthPrice": None,
        "communitySpotPrice": None,
        "secureSpotPrice": None,
        "lowestPrice": lambda args: {"minimumBidPrice": None, "uninterruptablePrice": lowest},
    }


def _snapshot(pod: _Pod) -> FakePod:
    return FakePod(
        id=pod.id,
        name=pod.name,
        image=pod.image,
        gpu=pod.gpu.id,
        gpu_count=pod.gpu_count,
        cloud_type=pod.cloud_type,
        cost_per_hr=pod.cost_per_hr,
        env=dict(pod.env),
        docker_args=pod.docker_args,
        status=pod.status,
        running=pod.running(),
        restarts=pod.restarts,
        folder=pod.folder,
        pod_key=pod.pod_key,
        container_env=dict(pod.container_env),
    )


def _end(pod: _Pod, grace_s: float) -> None:
    """Stop the pod's container: SIGTERM to its process group, SIGKILL to what is left after `grace_s`."""
    pod.ended.set()
    process = pod.process
    if process is None:
        return
    if grace_s > 0:
        _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _signal_group(process, 0):
            time.sleep(0.02)
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> bool:
    """Send `sig` to the process group the container's command leads; False if no process is left in it."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return False
    return True

"""Starts, inspects and stops the local stack: SeaweedFS (unless an S3 endpoint is configured)
and the four services, each as its own process group, recorded in `$TUNEFORGE_HOME/stack.json`.

`up` is idempotent: components that are already running and healthy are kept. `down` stops
exactly the processes `up` recorded (checked by pid and start time, so a reused pid is never hit).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from services.common import object_store_server as oss
from services.common.artifact_store import ArtifactStore
from services.common.settings import SERVICE_NAMES, StackSettings, StoreSettings

STORE = "object-store"
Progress = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not be brought up (port taken, a service exited, timeout)."""


@dataclass
class Component:
    name: str
    address: str
    pid: int = 0
    # Process start time (psutil): identifies the process together with the pid.
    started_at: float = 0.0
    log: str = ""
    # False for an external object store that `up` did not start and `down` must not stop.
    managed: bool = True
    health: str = "UNKNOWN"
    alive: bool = False

    def process(self) -> psutil.Process | None:
        if not self.pid:
            return None
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started_at) > 1.0 or not proc.is_running():
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None


@dataclass
class StackState:
    components: dict[str, Component] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> StackState:
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls({k: Component(**v) for k, v in raw.get("components", {}).items()})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"components": {k: asdict(v) for k, v in self.components.items()}}, indent=2)
        )
        tmp.replace(path)


class LocalStack:
    """The stack rooted at `settings.home`."""

    def __init__(
        self,
        settings: StackSettings,
        store: StoreSettings,
        *,
        external_store: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.external_store = external_store
        self.store_ports = {**oss.DEFAULT_PORTS, **settings.store_ports}
        self.home = settings.home
        self.state_path = self.home / "stack.json"
        self.log_dir = self.home / "logs"

    # --- credentials -------------------------------------------------------------------------

    def _credentials(self) -> tuple[str, str]:
        """Access and secret key of the embedded store: generated once, kept 0600 in home."""
        path = self.home / "object-store" / "credentials.json"
        if path.exists():
            creds = json.loads(path.read_text())
            return creds["access_key"], creds["secret_key"]
        path.parent.mkdir(parents=True, exist_ok=True)
        creds = {"access_key": "tf" + secrets.token_hex(8), "secret_key": secrets.token_hex(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(creds, fh)
        return creds["access_key"], creds["secret_key"]

    def store_settings(self) -> StoreSettings:
        """The store the services use: the configured one, or the embedded one's credentials."""
        if self.external_store:
            return self.store
        access, secret = self._credentials()
        return self.store.model_copy(
            update={
                "endpoint": f"{oss.HOST}:{self.store_ports['s3']}",
                "access_key": access,
                "secret_key": SecretStr(secret),
                "secure": False,
            }
        )

    # --- up ------------------------------------------------------------------------------------

    def up(self, timeout_s: float = 60.0, progress: Progress | None = None) -> StackState:
        say: Progress = progress or (lambda _msg: None)
        state = StackState.load(self.state_path)
        deadline = time.monotonic() + timeout_s
        store = self.store_settings()
        self._up_store(state, store, deadline, say)
        started: list[str] = []
        for name in SERVICE_NAMES:
            current = state.components.get(name)
            if current and current.process() and self._health(current.address) == "SERVING":
                say(f"{name} already running at {current.address}")
                continue
            if current and current.process():
                # Alive but not serving (stuck): replace it.
                _terminate(current, grace_s=5)
            address = f"{self.settings.host}:{self.settings.port_for(name)}"
            self._check_port_free(name, self.settings.port_for(name))
            state.components[name] = self._spawn_service(name, address, store)
            state.save(self.state_path)
            started.append(name)
            say(f"starting {name} on {address}")
        for name in started:
            self._wait_serving(state.components[name], deadline)
            say(f"{name} SERVING")
        return self.status()

    def _up_store(
        self, state: StackState, store: StoreSettings, deadline: float, say: Progress
    ) -> None:
        if self.external_store:
            state.components[STORE] = Component(
                STORE, store.host_port, managed=False, health="UNKNOWN"
            )
            state.save(self.state_path)
            say(f"using the configured object store at {store.host_port}")
            return
        current = state.components.get(STORE)
        if current and current.managed and current.process():
            say(f"object store already running at {current.address}")
            return
        ports = self.store_ports
        say(f"starting the object store on {oss.HOST}:{ports['s3']}")
        try:
            handle = oss.start_object_store(
                self.home / "object-store",
                store.access_key,
                store.secret_key.get_secret_value(),
                ports=ports,
                bucket=store.bucket,
                timeout_s=max(5.0, deadline - time.monotonic()),
            )
        except oss.ObjectStoreError as exc:
            raise StackError(str(exc)) from exc
        state.components[STORE] = Component(
            STORE,
            handle.endpoint,
            pid=handle.pid,
            started_at=psutil.Process(handle.pid).create_time(),
            log=str(handle.log_path),
        )
        state.save(self.state_path)

    def _check_port_free(self, name: str, port: int) -> None:
        if oss.ports_in_use([port]):
            raise StackError(
                f"cannot start {name}: port {port} on {self.settings.host} is already in use; "
                f"stop what holds it or set TUNEFORGE_{name.upper()}_PORT"
            )

    def _spawn_service(self, name: str, address: str, store: StoreSettings) -> Component:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        env = {**os.environ, **self._service_env(store)}
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}.main"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=self.home,
            )
        return Component(
            name,
            address,
            pid=proc.pid,
            started_at=psutil.Process(proc.pid).create_time(),
            log=str(log_path),
        )

    def _service_env(self, store: StoreSettings) -> dict[str, str]:
        s = self.settings
        env = {
            "TUNEFORGE_HOME": str(self.home),
            "TUNEFORGE_HOST": s.host,
            "TUNEFORGE_LOG_FORMAT": "json",
            "TUNEFORGE_S3_ENDPOINT": store.endpoint,
            "TUNEFORGE_S3_ACCESS_KEY": store.access_key,
            "TUNEFORGE_S3_SECRET_KEY": store.secret_key.get_secret_value(),
            "TUNEFORGE_S3_BUCKET": store.bucket,
            "TUNEFORGE_S3_SECURE": "true" if store.secure else "false",
        }
        for name in SERVICE_NAMES:
            env[f"TUNEFORGE_{name.upper()}_PORT"] = str(s.port_for(name))
            env[f"TUNEFORGE_{name.upper()}_TARGET"] = f"{s.host}:{s.port_for(name)}"
        return env

    def _wait_serving(self, component: Component, deadline: float) -> None:
        while True:
            if component.process() is None:
                raise StackError(
                    f"{component.name} exited during start; its log ({component.log}) ends with:\n"
                    + oss.log_tail(Path(component.log), 3000)
                )
            if self._health(component.address) == "SERVING":
                return
            if time.monotonic() > deadline:
                raise StackError(
                    f"{component.name} did not report SERVING in time; log: {component.log}"
                )
            time.sleep(0.2)

    @staticmethod
    def _health(address: str, timeout_s: float = 2.0) -> str:
        with grpc.insecure_channel(address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=timeout_s
                )
            except grpc.RpcError:
                return "UNREACHABLE"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    # --- status / down -------------------------------------------------------------------------

    def status(self) -> StackState:
        state = StackState.load(self.state_path)
        for comp in state.components.values():
            proc = comp.process()
            comp.alive = proc is not None if comp.managed else True
            if comp.name == STORE:
                comp.health = self._store_health()
                if not comp.managed:
                    comp.alive = comp.health == "SERVING"
            else:
                comp.health = self._health(comp.address) if comp.alive else "STOPPED"
        return state

    def _store_health(self) -> str:
        store = self.store_settings().model_copy(update={"deadline_s": 3.0})
        try:
            ArtifactStore(store).ping(timeout_s=3.0)
        except Exception:
            return "UNREACHABLE"
        return "SERVING"

    def down(self, grace_s: float = 20.0, progress: Progress | None = None) -> list[str]:
        """Stops what `up` started, services first, the store last. Returns what was stopped."""
        say: Progress = progress or (lambda _msg: None)
        state = StackState.load(self.state_path)
        stopped = []
        order = [n for n in SERVICE_NAMES if n in state.components] + (
            [STORE] if STORE in state.components else []
        )
        for name in order:
            comp = state.components[name]
            if comp.managed and _terminate(comp, grace_s):
                stopped.append(name)
                say(f"stopped {name} (pid {comp.pid})")
        if self.state_path.exists():
            self.state_path.unlink()
        return stopped


def _terminate(comp: Component, grace_s: float) -> bool:
    """SIGTERM the component's process group, SIGKILL what is left after `grace_s`."""
    proc = comp.process()
    if proc is None:
        return False
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return False
    members = [proc, *proc.children(recursive=True)]
    with contextlib.suppress(ProcessLookupError, psutil.Error):
        os.killpg(pgid, signal.SIGTERM)
    _gone, alive = psutil.wait_procs(members, timeout=grace_s)
    if alive:
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            os.killpg(pgid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(ProcessLookupError, psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    return True

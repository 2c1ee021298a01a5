"""Configuration of the services, read once in each `main()` from `TUNEFORGE_*` variables.

Core code receives these objects; it never reads `os.environ` itself.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORTS = {"datasets": 50051, "training": 50052, "conversion": 50053, "inference": 50054}
SERVICE_NAMES = tuple(DEFAULT_PORTS)


def default_home() -> Path:
    return Path.home() / ".tuneforge"


class StoreSettings(BaseSettings):
    """The S3-compatible object store (MinIO in production, SeaweedFS on dev machines and CI)."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_S3_", extra="ignore")

    # host:port, or an http(s):// URL.
    endpoint: str = "127.0.0.1:8333"
    # Credentials of an S3 user that may read and write the bucket.
    access_key: str = ""
    secret_key: SecretStr = SecretStr("")
    # The one bucket every artifact (datasets, models, checkpoints, reports) lives in.
    bucket: str = "tuneforge"
    region: str = "us-east-1"
    # TLS to the store (also implied by an https:// endpoint).
    secure: bool = False
    # How long one store operation keeps retrying connection errors before UNAVAILABLE.
    deadline_s: float = 15.0
    # Socket timeouts of one HTTP request to the store.
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0
    # Multipart part size for uploads; memory per transfer stays near this size.
    part_size_mb: int = 16

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[-1].rstrip("/")

    @property
    def use_tls(self) -> bool:
        return self.secure or self.endpoint.startswith("https://")

    def env(self) -> dict[str, str]:
        """These settings as TUNEFORGE_S3_* variables, for a worker process's environment."""
        values = self.model_dump()
        values["secret_key"] = self.secret_key.get_secret_value()
        return {
            f"TUNEFORGE_S3_{key.upper()}": str(value).lower()
            if isinstance(value, bool)
            else str(value)
            for key, value in values.items()
        }


class ServiceSettings(BaseSettings):
    """Settings common to every service process."""

    model_config = SettingsConfigDict(env_prefix="TUNEFORGE_", extra="ignore")

    # State, work directories, caches and logs of the services (and the embedded store's data).
    home: Path = Field(default_factory=default_home)
    # The project resources are created in when a request names none.
    project: str = "default"
    # Address the services listen on; each service has its own port (0 picks a free one).
    host: str = "127.0.0.1"
    # Each service's gRPC port.
    datasets_port: int = DEFAULT_PORTS["datasets"]
    training_port: int = DEFAULT_PORTS["training"]
    conversion_port: int = DEFAULT_PORTS["conversion"]
    inference_port: int = DEFAULT_PORTS["inference"]
    # debug, info, warning or error.
    log_level: str = "info"
    # "json" in services, "console" for people.
    log_format: str = "json"
    # Largest gRPC message accepted or sent (uploads stream in chunks far below this).
    max_message_mb: int = 64
    # On SIGTERM: seconds in-flight calls get to finish before they are cancelled.
    grace_s: float = 20.0
    # Addresses of the other services, for service-to-service calls.
    datasets_target: str = f"127.0.0.1:{DEFAULT_PORTS['datasets']}"
    training_target: str = f"127.0.0.1:{DEFAULT_PORTS['training']}"
    conversion_target: str = f"127.0.0.1:{DEFAULT_PORTS['conversion']}"
    inference_target: str = f"127.0.0.1:{DEFAULT_PORTS['inference']}"
    # SQLAlchemy URL of the service's job database; default: SQLite under data_dir.
    database_url: str = ""
    # Jobs of a service (training, conversion) that run at once, each in its worker processes.
    max_concurrent_jobs: int = 1

    def port_for(self, service: str) -> int:
        return int(getattr(self, f"{service}_port"))

    def data_dir(self, service: str) -> Path:
        return self.home / "state" / service

    def database_url_for(self, service: str) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir(service) / 'state.db'}"

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024


class StackSettings(ServiceSettings):
    """Settings of `tuneforge up`: the services' settings plus the embedded object store's."""

    # Ports of the embedded SeaweedFS servers as a JSON object (keys as in
    # object_store_server.DEFAULT_PORTS); empty: SeaweedFS's defaults, S3 on 8333.
    store_ports: dict[str, int] = Field(default_factory=dict)

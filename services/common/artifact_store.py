"""The artifact store: every byte the services share goes through here, to any S3-compatible server.

`ArtifactStore` wraps the `minio` SDK with what every service needs:

- bounded, retried operations: connection-level failures and 5xx answers are retried with
  exponential backoff and jitter until `StoreSettings.deadline_s`, then `StoreUnavailable` is
  raised naming the endpoint. Store errors never escape as SDK exceptions: a missing key is
  `NotFound`, refused credentials `StoreAccessDenied`, a sha256 mismatch `DataCorrupt`.
- streaming transfers: uploads are multipart with `part_size_mb` parts, downloads are chunked, so
  memory stays near one part whatever the file size; sha256 is computed while the bytes flow.
- artifacts: a prefix holding files plus a `manifest.json` written LAST. An artifact without a
  manifest does not exist for readers; deleting removes the manifest FIRST.

All methods block (network and disk I/O). Async servicers call them through an executor
(`await loop.run_in_executor(None, store.get_file, ...)`), never on the event loop. One instance is
safe to share between threads.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import check_bucket_name
from pydantic import ValidationError

from services.common.errors import (
    DataCorrupt,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    StoreUnavailable,
    TuneforgeError,
)
from services.common.manifest import MANIFEST_FILE, FileEntry, Manifest
from services.common.settings import StoreSettings

T = TypeVar("T")

MiB = 1024 * 1024
DOWNLOAD_CHUNK = 1 * MiB
# S3 limits: parts of 5 MiB..5 GiB, at most 10000 parts per upload.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
_BACKOFF_INITIAL_S = 0.1
_BACKOFF_MAX_S = 2.0
# S3 error codes worth retrying: the server is overloaded or briefly failing.
_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeTooSkewed"}
)
_ACCESS_S3_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)


class StoreAccessDenied(StoreUnavailable):
    """The object store refused our credentials or permissions: a configuration problem.

    Raised at once (no retries). It is a `StoreUnavailable` for callers (gRPC UNAVAILABLE, reason
    STORE_UNAVAILABLE) because the service cannot reach its data until an operator fixes it.
    """


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: datetime | None
    content_type: str | None


class _HashingReader:
    """A read-only stream that hashes (sha256) and counts the bytes as the SDK reads them."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._hash.update(data)
            self.bytes_read += len(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures and server-side 5xx: worth another try before the deadline."""
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_S3_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        # Non-XML answers, e.g. a proxy's 502/503 page while the store restarts.
        code = getattr(exc, "_code", 0) or 0
        return int(code) >= 500 or int(code) == 429
    # urllib3.exceptions.HTTPError covers MaxRetryError, NewConnectionError, ProtocolError,
    # ConnectTimeoutError/ReadTimeoutError; the builtins cover errors raised below urllib3.
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def _join(prefix: str, name: str) -> str:
    return f"{prefix.rstrip('/')}/{name}" if prefix else name


def _dir_prefix(prefix: str) -> str:
    """The prefix with exactly one trailing "/": "models/m1" must never match "models/m10"."""
    prefix = prefix.strip("/")
    if not prefix:
        raise InvalidArgument("an artifact prefix must not be empty", field="prefix")
    return prefix + "/"


class ArtifactStore:
    """Blocking client of the S3-compatible artifact store (see module docstring)."""

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        try:
            check_bucket_name(self.bucket)
        except ValueError as exc:
            raise InvalidArgument(
                f"invalid bucket name {self.bucket!r}: {exc}", field="bucket"
            ) from exc
        self.endpoint = settings.host_port
        self._part_size = max(MIN_PART_SIZE, settings.part_size_mb * MiB)
        self._pools: list[urllib3.PoolManager] = []
        self._clients_by_timeout: dict[float, Minio] = {}
        self._lock = threading.Lock()
        # Bulk transfers (multipart parts, streamed downloads) wait up to read_timeout_s per read.
        self._client = self._client_with(settings.read_timeout_s)
        # Small requests (stat, list, delete, manifests) never wait longer than the deadline, so a
        # hung server (accepting connections, never answering) fails within it too.
        self._quick = self._client_with(min(settings.read_timeout_s, settings.deadline_s))

    def _client_with(self, read_timeout_s: float) -> Minio:
        """A Minio client whose connections time out reads after `read_timeout_s` (cached)."""
        read_timeout_s = max(0.5, round(read_timeout_s, 1))
        with self._lock:
            client = self._clients_by_timeout.get(read_timeout_s)
            if client is not None:
                return client
            settings = self.settings
            timeout = urllib3.Timeout(connect=settings.connect_timeout_s, read=read_timeout_s)
            # retries=False: urllib3 raises at once and our deadline-bounded loop decides.
            if settings.use_tls:
                http = urllib3.PoolManager(
                    timeout=timeout,
                    retries=False,
                    maxsize=16,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
                )
            else:
                http = urllib3.PoolManager(timeout=timeout, retries=False, maxsize=16)
            client = Minio(
                self.endpoint,
                access_key=settings.access_key,
                secret_key=settings.secret_key.get_secret_value(),
                secure=settings.use_tls,
                region=settings.region or None,
                http_client=http,
            )
            self._pools.append(http)
            self._clients_by_timeout[read_timeout_s] = client
            return client

    def close(self) -> None:
        """Close pooled connections (the store stays usable; connections reopen on demand)."""
        for pool in self._pools:
            pool.clear()

    def __enter__(self) -> ArtifactStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- retry and error mapping

    def _retry(
        self,
        operation: str,
        fn: Callable[[], T],
        *,
        resource: str = "",
        deadline_s: float | None = None,
        retry: bool = True,
    ) -> T:
        """Run `fn`, retrying transient failures until the deadline; map every store error."""
        budget = self.settings.deadline_s if deadline_s is None else deadline_s
        start = time.monotonic()
        deadline = start + budget
        backoff = _BACKOFF_INITIAL_S
        attempts = 0
        while True:
            attempts += 1
            try:
                return fn()
            except TuneforgeError:
                raise
            except Exception as exc:
                if not _is_transient(exc):
                    raise self._translate(exc, operation, resource) from exc
                remaining = deadline - time.monotonic()
                if not retry or remaining <= 0:
                    raise self._unavailable(operation, resource, exc, start, attempts) from exc
            # Exponential backoff with jitter, never sleeping past the deadline.
            time.sleep(min(remaining, backoff / 2 + random.uniform(0, backoff / 2)))
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _unavailable(
        self, operation: str, resource: str, exc: BaseException, start: float, attempts: int
    ) -> StoreUnavailable:
        elapsed = time.monotonic() - start
        return StoreUnavailable(
            f"object store at {self.endpoint} is unavailable: {operation} "
            f"{resource or ''} failed after {attempts} attempt(s) in {elapsed:.1f} s "
            f"({type(exc).__name__}: {exc})".replace("  ", " "),
            metadata={"endpoint": self.endpoint, "operation": operation, "resource": resource},
        )

    def _translate(self, exc: Exception, operation: str, resource: str) -> Exception:
        if isinstance(exc, S3Error):
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchUpload"):
                return NotFound(resource or str(exc.object_name))
            if exc.code == "NoSuchBucket":
                return FailedPrecondition(
                    f"bucket {self.bucket!r} does not exist on the object store at "
                    f"{self.endpoint}; create it (ArtifactStore.ensure_bucket)",
                    metadata={"bucket": self.bucket, "endpoint": self.endpoint},
                )
            if exc.code in _ACCESS_S3_CODES:
                return StoreAccessDenied(
                    f"object store at {self.endpoint} refused access ({exc.code}) for "
                    f"{operation} {resource}: check the access key, secret key and permissions "
                    "(TUNEFORGE_S3_ACCESS_KEY / TUNEFORGE_S3_SECRET_KEY)",
                    metadata={"endpoint": self.endpoint, "code": exc.code, "operation": operation},
                )
            return TuneforgeError(
                f"object store at {self.endpoint} rejected {operation} {resource}: "
                f"{exc.code}: {exc.message}",
                metadata={"endpoint": self.endpoint, "code": exc.code, "operation": operation},
            )
        if isinstance(exc, ServerError | InvalidResponseError):
            return TuneforgeError(
                f"object store at {self.endpoint} gave an unexpected answer to {operation} "
                f"{resource}: {exc}",
                metadata={"endpoint": self.endpoint, "operation": operation},
            )
        return exc

    # ---------------------------------------------------------------- addressing

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @staticmethod
    def parse_uri(uri: str) -> tuple[str, str]:
        """`s3://bucket/key` -> (bucket, key)."""
        if not uri.startswith("s3://"):
            raise InvalidArgument(f"not an s3:// URI: {uri!r}", field="uri")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise InvalidArgument(f"an s3 URI needs a bucket and a key: {uri!r}", field="uri")
        return bucket, key

    # ---------------------------------------------------------------- buckets and health

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (idempotent)."""

        def run() -> None:
            if not self._quick.bucket_exists(self.bucket):
                try:
                    self._quick.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self._retry("ensure_bucket", run, resource=self.bucket)

    def ping(self, timeout_s: float | None = None) -> None:
        """Readiness check: a real write, read and delete of a small object within `timeout_s`.

        Raises StoreUnavailable (or its subclass StoreAccessDenied) on any failure.
        """
        budget = self.settings.deadline_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        key = f".tuneforge/ping/{uuid.uuid4().hex}"
        payload = uuid.uuid4().bytes

        # Reads time out within the budget too, so a hung server cannot stall the check.
        client = self._client_with(min(budget, self.settings.read_timeout_s))

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        try:
            self._retry(
                "ping",
                lambda: client.put_object(self.bucket, key, io.BytesIO(payload), len(payload)),
                resource=key,
                deadline_s=left(),
            )
            got = self._retry(
                "ping", lambda: self._read_all(key, client), resource=key, deadline_s=left()
            )
            self._retry(
                "ping",
                lambda: client.remove_object(self.bucket, key),
                resource=key,
                deadline_s=left(),
            )
        except StoreUnavailable:
            raise
        except TuneforgeError as exc:
            raise StoreUnavailable(
                f"object store at {self.endpoint} failed its readiness check: {exc.message}",
                metadata={"endpoint": self.endpoint, "operation": "ping"},
            ) from exc
        if got != payload:
            raise StoreUnavailable(
                f"object store at {self.endpoint} returned other bytes than were written",
                metadata={"endpoint": self.endpoint, "operation": "ping"},
            )

    # ---------------------------------------------------------------- uploads

    def _part_size_for(self, length: int) -> int:
        """The configured part size, grown in MiB steps when the file needs > 10000 parts."""
        if length <= self._part_size * MAX_PARTS:
            return self._part_size
        needed = -(-length // MAX_PARTS)
        return -(-needed // MiB) * MiB

    def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> FileEntry:
        """Upload a local file (multipart above one part), hashing it as it streams.

        Memory stays near one part whatever the size. On a transient failure the whole upload is
        retried from the start of the file (the file is reopened and hashed again).
        """
        path = Path(path)
        size = path.stat().st_size
        part_size = self._part_size_for(size)

        def attempt() -> FileEntry:
            with path.open("rb") as fh:
                reader = _HashingReader(fh)
                self._client.put_object(
                    self.bucket,
                    key,
                    reader,  # type: ignore[arg-type]
                    size,
                    content_type=content_type,
                    part_size=part_size,
                    num_parallel_uploads=1,
                )
            if reader.bytes_read != size:
                raise DataCorrupt(
                    f"{path} changed size while it was uploaded to {self.uri(key)}",
                    metadata={"path": str(path), "key": key},
                )
            return FileEntry(path=key, sha256=reader.hexdigest(), size_bytes=size)

        return self._retry("put_file", attempt, resource=key)

    def put_stream(
        self,
        key: str,
        readable: BinaryIO,
        length: int = -1,
        content_type: str = "application/octet-stream",
    ) -> FileEntry:
        """Upload from a one-shot stream (`length=-1`: unknown, multipart until EOF).

        A stream cannot be rewound, so this is NOT retried: a transient failure raises
        StoreUnavailable at once and the caller restarts from its source (put_file retries).
        """
        reader = _HashingReader(readable)

        def attempt() -> FileEntry:
            self._client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]
                length,
                content_type=content_type,
                part_size=self._part_size,
                num_parallel_uploads=1,
            )
            return FileEntry(path=key, sha256=reader.hexdigest(), size_bytes=reader.bytes_read)

        return self._retry("put_stream", attempt, resource=key, retry=False)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> FileEntry:
        digest = hashlib.sha256(data).hexdigest()

        def attempt() -> FileEntry:
            self._quick.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )
            return FileEntry(path=key, sha256=digest, size_bytes=len(data))

        return self._retry("put_bytes", attempt, resource=key)

    # ---------------------------------------------------------------- downloads

    def _read_all(self, key: str, client: Minio | None = None) -> bytes:
        client = client or self._quick
        response = client.get_object(self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory: for small objects (manifests, configs) only."""
        return self._retry("get", lambda: self._read_all(key), resource=key)

    def get_file(
        self,
        key: str,
        dest: Path,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> FileEntry:
        """Stream an object to `dest` (temp file, then atomic rename), verifying sha256 and size.

        Raises DataCorrupt when the bytes do not match; `dest` is then left untouched.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def attempt() -> FileEntry:
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            try:
                digest = hashlib.sha256()
                size = 0
                response = self._client.get_object(self.bucket, key)
                try:
                    with tmp.open("wb") as out:
                        for chunk in response.stream(DOWNLOAD_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            size += len(chunk)
                finally:
                    response.close()
                    response.release_conn()
                sha = digest.hexdigest()
                if expected_sha256 is not None and sha != expected_sha256:
                    raise DataCorrupt(
                        f"{self.uri(key)} is corrupt: sha256 {sha} != expected {expected_sha256}",
                        metadata={"resource": self.uri(key), "sha256": sha},
                    )
                if expected_size is not None and size != expected_size:
                    raise DataCorrupt(
                        f"{self.uri(key)} is corrupt: {size} bytes != expected {expected_size}",
                        metadata={"resource": self.uri(key), "size_bytes": size},
                    )
                os.replace(tmp, dest)
                return FileEntry(path=key, sha256=sha, size_bytes=size)
            finally:
                tmp.unlink(missing_ok=True)

        return self._retry("get_file", attempt, resource=key)

    def iter_chunks(
        self,
        key: str,
        chunk_size: int = DOWNLOAD_CHUNK,
        offset: int = 0,
        length: int | None = None,
    ) -> Iterator[bytes]:
        """Yield the object's bytes [offset, offset+length) in chunks of at most `chunk_size`.

        A connection lost mid-stream is resumed from the last byte yielded (ranged GET).
        Close the generator (or exhaust it) to release the connection.
        """
        if offset < 0 or (length is not None and length < 0) or chunk_size <= 0:
            raise InvalidArgument("offset, length and chunk_size must be non-negative")
        position = offset
        remaining = length
        last_progress = time.monotonic()
        while remaining is None or remaining > 0:
            response = self._retry(
                "get",
                lambda pos=position, rem=remaining: self._client.get_object(  # type: ignore[misc]
                    self.bucket, key, offset=pos, length=rem or 0
                ),
                resource=key,
            )
            try:
                for chunk in response.stream(chunk_size):
                    if remaining is not None:
                        chunk = chunk[:remaining]
                        remaining -= len(chunk)
                    position += len(chunk)
                    if chunk:
                        last_progress = time.monotonic()
                        yield chunk
                    if remaining == 0:
                        break
                return
            except Exception as exc:
                if not _is_transient(exc):
                    raise self._translate(exc, "get", key) from exc
                if time.monotonic() - last_progress > self.settings.deadline_s:
                    raise self._unavailable("get", key, exc, last_progress, 1) from exc
                # Resume from `position` on the next loop turn.
            finally:
                response.close()
                response.release_conn()

    def stat(self, key: str) -> ObjectInfo:
        obj = self._retry("stat", lambda: self._quick.stat_object(self.bucket, key), resource=key)
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            etag=obj.etag or "",
            last_modified=obj.last_modified,
            content_type=obj.content_type,
        )

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    # ---------------------------------------------------------------- listing and deleting

    def _list(
        self, prefix: str, recursive: bool, start_after: str | None = None
    ) -> list[tuple[str, bool]]:
        """(name, is_prefix) in key order; the whole listing is one retried unit."""

        def run() -> list[tuple[str, bool]]:
            return [
                (str(obj.object_name), bool(obj.is_dir))
                for obj in self._quick.list_objects(
                    self.bucket, prefix=prefix or None, recursive=recursive, start_after=start_after
                )
            ]

        return self._retry("list", run, resource=prefix)

    def list_keys(self, prefix: str = "", recursive: bool = True) -> list[str]:
        """Object keys under `prefix` (a raw string prefix), sorted."""
        return sorted(name for name, is_prefix in self._list(prefix, recursive) if not is_prefix)

    def list_prefixes(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> list[str]:
        """Child "directories" one level under `prefix` (delimiter "/"), sorted, ending in "/".

        `start_after` (a previously returned prefix) and `limit` page through large listings.
        """
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        found: list[str] = []
        for name, is_prefix in self._list(prefix, recursive=False, start_after=start_after):
            if not is_prefix or (start_after is not None and name <= start_after):
                continue
            found.append(name)
            if limit is not None and len(found) >= limit:
                break
        return sorted(found)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (raw); returns how many."""
        if not prefix:
            raise InvalidArgument("refusing to delete an empty prefix (the whole bucket)")

        def run() -> int:
            keys = self.list_keys(prefix, recursive=True)
            if not keys:
                return 0
            errors = list(self._quick.remove_objects(self.bucket, (DeleteObject(k) for k in keys)))
            if errors:
                first = errors[0]
                raise TuneforgeError(
                    f"could not delete {len(errors)} of {len(keys)} objects under "
                    f"{self.uri(prefix)}; first: {first.name}: {first.code} {first.message}",
                    metadata={"resource": self.uri(prefix), "failed": len(errors)},
                )
            return len(keys)

        return self._retry("delete", run, resource=prefix)

    def delete(self, key: str) -> None:
        """Delete one object (no error when it is already gone)."""
        self._retry("delete", lambda: self._quick.remove_object(self.bucket, key), resource=key)

    def remove_bucket(self) -> None:
        """Delete every object, then the bucket itself (tests and teardown; no-op if absent)."""

        def run() -> None:
            if not self._quick.bucket_exists(self.bucket):
                return
            keys = [
                str(o.object_name) for o in self._quick.list_objects(self.bucket, recursive=True)
            ]
            for _error in self._quick.remove_objects(self.bucket, (DeleteObject(k) for k in keys)):
                pass
            self._quick.remove_bucket(self.bucket)

        self._retry("remove_bucket", run, resource=self.bucket)

    # ---------------------------------------------------------------- presigned URLs

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._retry(
            "presign",
            lambda: self._client.presigned_get_object(self.bucket, key, expires=expires),
            resource=key,
        )

    def presigned_put_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._retry(
            "presign",
            lambda: self._client.presigned_put_object(self.bucket, key, expires=expires),
            resource=key,
        )

    # ---------------------------------------------------------------- artifacts

    def upload_dir(self, local_dir: Path, prefix: str) -> list[FileEntry]:
        """Upload every file under `local_dir` to `prefix/<relative path>`; entries sorted by path.

        The entries' paths are relative to the prefix, ready for a Manifest. Write the manifest
        after this returns (write_manifest), never before.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise InvalidArgument(f"{root} is not a directory", field="local_dir")
        base = _dir_prefix(prefix)
        files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
        if any(rel == MANIFEST_FILE for rel, _ in files):
            raise InvalidArgument(
                f"{root / MANIFEST_FILE} would clash with the artifact's own manifest",
                field="local_dir",
            )
        entries = []
        for rel, path in files:
            uploaded = self.put_file(base + rel, path)
            entries.append(
                FileEntry(path=rel, sha256=uploaded.sha256, size_bytes=uploaded.size_bytes)
            )
        return entries

    def write_manifest(self, prefix: str, manifest: Manifest, *, verify: bool = True) -> str:
        """Publish the artifact by writing its manifest (last); returns the manifest's sha256.

        With `verify`, every listed file must already be in the store with its size, otherwise
        DataCorrupt is raised and nothing is published.
        """
        base = _dir_prefix(prefix)
        if verify:
            for entry in manifest.files:
                try:
                    info = self.stat(base + entry.path)
                except NotFound:
                    raise DataCorrupt(
                        f"cannot publish {self.uri(base)}: {entry.path} is not in the store",
                        metadata={"resource": self.uri(base + entry.path)},
                    ) from None
                if info.size != entry.size_bytes:
                    raise DataCorrupt(
                        f"cannot publish {self.uri(base)}: {entry.path} has {info.size} bytes, "
                        f"manifest says {entry.size_bytes}",
                        metadata={"resource": self.uri(base + entry.path)},
                    )
        data = manifest.to_json_bytes()
        return self.put_bytes(base + MANIFEST_FILE, data, content_type="application/json").sha256

    def read_manifest(self, prefix: str) -> Manifest | None:
        """The artifact's manifest, or None when there is none (the artifact does not exist)."""
        key = _dir_prefix(prefix) + MANIFEST_FILE
        try:
            data = self.get_bytes(key)
        except NotFound:
            return None
        try:
            return Manifest.from_json_bytes(data)
        except ValidationError as exc:
            raise DataCorrupt(
                f"{self.uri(key)} is not a valid manifest: {exc.error_count()} error(s), "
                f"first: {exc.errors()[0]['msg']}",
                metadata={"resource": self.uri(key)},
            ) from exc

    def download_artifact(
        self, prefix: str, dest_dir: Path, manifest: Manifest | None = None
    ) -> Manifest:
        """Download every file of the manifest into `dest_dir`, verifying sha256 and size.

        Raises NotFound when the artifact has no manifest, DataCorrupt when a file differs.
        """
        base = _dir_prefix(prefix)
        if manifest is None:
            manifest = self.read_manifest(base)
            if manifest is None:
                raise NotFound(self.uri(base))
        dest_root = Path(dest_dir)
        dest_root.mkdir(parents=True, exist_ok=True)
        for entry in manifest.files:
            try:
                self.get_file(
                    base + entry.path,
                    dest_root / entry.path,
                    expected_sha256=entry.sha256,
                    expected_size=entry.size_bytes,
                )
            except NotFound:
                raise DataCorrupt(
                    f"{self.uri(base)} is corrupt: {entry.path} is in its manifest but not in "
                    "the store",
                    metadata={"resource": self.uri(base + entry.path)},
                ) from None
        return manifest

    def delete_artifact(self, prefix: str) -> int:
        """Unpublish (manifest first, so readers stop seeing it), then delete the files."""
        base = _dir_prefix(prefix)
        self.delete(base + MANIFEST_FILE)
        return self.delete_prefix(base)

    def list_artifacts(self, prefix: str) -> list[str]:
        """Child prefixes of `prefix` (e.g. "models/m1/") that hold a manifest, sorted."""
        children = self.list_prefixes(prefix)
        return [c for c in children if self.exists(c + MANIFEST_FILE)]

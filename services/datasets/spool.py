"""A file that is read while it is still being written: uploads are validated as they arrive.

The writer (the gRPC stream) appends chunks to a file on local disk; the reader (the ingest
thread) reads it through a normal buffered binary stream that waits at the end of the data until
more arrives or the writer closes. Memory stays bounded by the read buffer, whatever the size.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path


class SpoolAborted(Exception):
    """The writer gave up (the client cancelled or the stream broke)."""


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = path.open("wb")
        self._digest = hashlib.sha256()
        self._cond = threading.Condition()
        self._written = 0
        self._closed = False
        self._aborted = False

    # --- writer side ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._writer.write(data)
        self._writer.flush()
        with self._cond:
            self._written += len(data)
            self._cond.notify_all()

    def close(self) -> None:
        self._writer.close()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        if not self._writer.closed:
            self._writer.close()
        with self._cond:
            self._aborted = True
            self._closed = True
            self._cond.notify_all()

    @property
    def bytes_written(self) -> int:
        return self._written

    def sha256(self) -> str:
        """sha256 of everything written so far."""
        return self._digest.hexdigest()

    def wait_closed(self) -> None:
        """Blocks until the writer is done (for formats that need the whole file)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed)
        if self._aborted:
            raise SpoolAborted()

    # --- reader side ---------------------------------------------------------------------------

    def head(self, size: int) -> bytes:
        """The first `size` bytes (fewer if the file is shorter), once they have arrived."""
        with self._cond:
            self._cond.wait_for(lambda: self._written >= size or self._closed)
            if self._aborted:
                raise SpoolAborted()
        with self.path.open("rb") as fh:
            return fh.read(size)

    def reader(self, buffer_size: int = 1 << 20) -> io.BufferedReader:
        return io.BufferedReader(_TailRaw(self), buffer_size=buffer_size)

    def _wait_for(self, offset: int) -> bool:
        """Waits until bytes past `offset` exist (True) or the writer closed (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._written > offset or self._closed)
            if self._aborted:
                raise SpoolAborted()
            return self._written > offset


class _TailRaw(io.RawIOBase):
    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._file = spool.path.open("rb")
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if not self._spool._wait_for(self._offset):
            return 0
        n = self._file.readinto(buffer)
        self._offset += n or 0
        return n or 0

    @property
    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()
        super().close()

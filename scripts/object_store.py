"""Starts or stops a standalone SeaweedFS S3 server, for CI and for running the tests by hand.

python scripts/object_store.py start DIR   # prints `export TUNEFORGE_TEST_S3_...` lines
python scripts/object_store.py stop DIR
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from services.common import object_store_server as oss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    pid_file = args.dir / "weed.pid"
    if args.action == "stop":
        if pid_file.exists():
            oss.stop_object_store(int(pid_file.read_text()))
        return 0
    access, secret = "ci" + secrets.token_hex(6), secrets.token_hex(20)
    handle = oss.start_object_store(args.dir, access, secret, ports=oss.free_port_set())
    print(f"export TUNEFORGE_TEST_S3_ENDPOINT={handle.endpoint}")
    print(f"export TUNEFORGE_TEST_S3_ACCESS_KEY={access}")
    print(f"export TUNEFORGE_TEST_S3_SECRET_KEY={secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

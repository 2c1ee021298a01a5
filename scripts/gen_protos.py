"""Regenerates the Python stubs (messages, gRPC, .pyi) from protos/ into clients/python/tuneforge.

`python scripts/gen_protos.py` writes them; `--check` regenerates into a temporary folder and
fails when the committed stubs differ (CI runs it so the stubs never drift from the contract).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "protos"
OUT = ROOT / "clients" / "python"
# Generated packages, as folders under tuneforge/ (oip: the Open Inference Protocol).
PACKAGES = ["common/v1", "datasets/v1", "training/v1", "conversion/v1", "inference/v1", "oip/v2"]


def generate(out: Path) -> list[Path]:
    import grpc_tools

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(p.relative_to(PROTOS) for p in PROTOS.rglob("*.proto"))
    # mypy-protobuf's plugin lives next to this interpreter (the venv), which need not be on PATH.
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={out}",
        *[str(f) for f in files],
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)
    generated = []
    for pkg in PACKAGES:
        version = out / "tuneforge" / pkg
        for folder in (version.parent, version):
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated from protos/; do not edit."""\n')
        generated.extend(sorted(version.iterdir()))
    return [p for p in generated if p.suffix in {".py", ".pyi"}]


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        drift = []
        for path in fresh:
            committed = OUT / path.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                drift.append(str(committed.relative_to(ROOT)))
        for pkg in PACKAGES:
            for committed in (OUT / "tuneforge" / pkg).glob("*_pb2*.py*"):
                if not (Path(tmp) / committed.relative_to(OUT)).exists():
                    drift.append(f"{committed.relative_to(ROOT)} (no longer generated)")
    if drift:
        print("generated stubs differ from protos/; run `make protos`:", *drift, sep="\n  ")
        return 1
    print(f"generated stubs match protos/ ({len(fresh)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift")
    args = parser.parse_args()
    if args.check:
        return check()
    for pkg in PACKAGES:
        shutil.rmtree(OUT / "tuneforge" / pkg, ignore_errors=True)
    files = generate(OUT)
    print(f"wrote {len(files)} files under {OUT.relative_to(ROOT)}/tuneforge")
    return 0


if __name__ == "__main__":
    sys.exit(main())

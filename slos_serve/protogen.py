"""Generates the gRPC stubs in proto/ from proto/*.proto (`make proto`).

The stubs are committed so that users need no grpcio-tools; a test checks that
they match a fresh generation.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(root: Path = ROOT) -> list[Path]:
    """Runs protoc over `root`/proto/*.proto, writing stubs beside them.

    protoc runs in its own interpreter: grpc_tools' bundled protobuf clashes
    with torch's when both are loaded in one process (a segfault).
    """
    protos = sorted((root / "proto").glob("*.proto"))
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{root}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *[str(p.relative_to(root)) for p in protos],
    ]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}\n{result.stderr}")
    return sorted((root / "proto").glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)

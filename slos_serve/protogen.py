"""Generates the gRPC stubs in proto/ from proto/*.proto (`make proto`).

The stubs are committed so that users need no grpcio-tools; a test checks that
they match a fresh generation.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path = PROTO_DIR) -> list[Path]:
    """Runs protoc over every .proto file; returns the files written."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir.parent}",
        f"--pyi_out={out_dir.parent}",
        f"--grpc_python_out={out_dir.parent}",
        *[str(p.relative_to(ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(out_dir.glob("*_pb2*.py*"))


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(ROOT))
    sys.exit(0)

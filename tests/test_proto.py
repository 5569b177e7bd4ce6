"""The committed gRPC stubs must be what `make proto` generates from the .proto."""

import shutil
from pathlib import Path

from slos_serve.protogen import ROOT, generate


def test_committed_stubs_match_fresh_generation(tmp_path: Path) -> None:
    (tmp_path / "proto").mkdir()
    for proto in (ROOT / "proto").glob("*.proto"):
        shutil.copy(proto, tmp_path / "proto" / proto.name)
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / "proto" / path.name
        assert committed.exists(), f"{path.name} is not committed: run `make proto`"
        assert committed.read_text() == path.read_text(), (
            f"proto/{path.name} differs from a fresh generation: run `make proto`"
        )

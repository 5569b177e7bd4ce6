"""`slos-serve bench soak` on the SIMULATED engine, short: every request it sent is accounted
for (completed, refused, failed or hung, and the coordinator counted as many), RSS and CPU
figures of every process are there, the JSON matches the table. No RSS growth is asserted
(20 s is no soak; the 10-minute run is the benchmark's business, README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slos_serve import cli

pytestmark = pytest.mark.timeout(180)


def test_short_soak_accounts_for_every_request(model_dir: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "soak.json"
    code = cli.main(["bench", "soak", "--model", model_dir, "--streams", "100",
                     "--minutes", str(20 / 60), "--warmup", "6", "--progress", "5",
                     "--prompt-tokens", "4,200", "--output-tokens", "1,32",
                     "--json", str(out)])
    printed = capsys.readouterr()
    res = json.loads(out.read_text())
    r = res["requests"]
    outcomes = r["completed"] + sum(r["refused"].values()) + sum(r["failed"].values())
    assert r["sent"] == outcomes + r["hung"] and r["unaccounted"] == 0
    assert r["hung"] == 0 and r["failed"] == {}, r
    assert r["coordinator_counted"] == r["sent"]
    assert r["completed"] > 100  # each stream came round more than once
    assert set(res["rss"]) == {"coordinator", "prefill-0", "decode-0", "load"}
    for name, m in res["rss"].items():
        assert m["warm_mb"] > 10 and m["end_mb"] > 10 and m["growth_pct"] is not None, name
        assert m["cpu_cores"] > 0, name
    assert res["restarts"] == {"coordinator": 0, "prefill-0": 0, "decode-0": 0}
    assert res["pass"]["all_accounted"] and res["pass"]["no_failures"]
    assert code == (0 if res["pass"]["all"] else 1)
    assert f"sent {r['sent']} = completed {r['completed']}" in printed.out
    assert printed.err.count("done ") >= 3  # progress lines every 5 s


def test_soak_flags_are_checked(model_dir: str) -> None:
    parse = cli.build_parser().parse_args
    args = parse(["bench", "soak"])
    assert (args.streams, args.minutes, args.shape, args.progress) == (1000, 10.0, "pd", 30.0)
    with pytest.raises(SystemExit, match="prompt-tokens"):
        cli.main(["bench", "soak", "--model", model_dir, "--prompt-tokens", "9"])

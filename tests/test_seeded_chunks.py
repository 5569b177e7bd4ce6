"""Seeded sampling across a prompt split into chunks (slos_serve/engine/seeded_sampling.py).

vLLM 0.32 on CPU dies on the first seeded request whose prompt is split (it rewinds a CPU
generator with set_offset); the plugin keeps the generator's state instead. Unit tests of the
generator, then a real engine with a 64-token step budget (the 257- and 600-token prompts are
prefilled in 5 and 10 chunks) whose greedy and seeded outputs must equal an unsplit engine's.
"""

from __future__ import annotations

import pytest
import torch

from slos_serve.engine.seeded_sampling import RewindableGenerator
from tests.conftest import GREEDY, SEEDED, reference_outputs


def test_a_rewind_undoes_exactly_the_last_kept_draw() -> None:
    plain = torch.Generator().manual_seed(7)
    gen = RewindableGenerator.copy_of(plain)
    expected = [torch.rand(3, generator=plain) for _ in range(2)]
    gen.keep()
    torch.rand(3, generator=gen)  # a draw vLLM discards (a prompt's chunk, not its end)
    gen.set_offset(gen.get_offset() - 4)  # vLLM's rewind, as _bookkeeping_sync does it
    got = [torch.rand(3, generator=gen) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_a_rewind_with_nothing_kept_fails_loudly() -> None:
    gen = RewindableGenerator()
    with pytest.raises(RuntimeError, match="before any draw was kept"):
        gen.set_offset(gen.get_offset() - 4)


@pytest.mark.slow
def test_split_prompts_sample_as_unsplit_ones(model_dir, prompts, reference, tmp_path) -> None:
    engine = {"enable_chunked_prefill": True, "max_num_batched_tokens": 64}
    outs = reference_outputs(model_dir, prompts, [GREEDY, SEEDED], tmp_path / "out.json",
                             engine)
    n = len(prompts)
    assert max(len(p) for p in prompts) > 4 * engine["max_num_batched_tokens"]
    assert outs[:n] == reference["greedy"]
    assert outs[n:] == reference["seeded"]
    assert reference["seeded"] != reference["greedy"]  # the seeded case really samples

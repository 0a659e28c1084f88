"""Token-budget batching and the adaptive budget, without torch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mgeo.worker.inference.batcher import AdaptiveBudget, padded_tokens, plan_batches, round_up


def test_round_up_and_padded_tokens():
    assert [round_up(n, 8) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    assert padded_tokens([3, 10, 5]) == 30
    assert padded_tokens([3, 10, 5], multiple=8) == 48
    assert padded_tokens([]) == 0


@given(lengths=st.lists(st.integers(1, 128), max_size=300), budget=st.integers(64, 4096),
       multiple=st.sampled_from([1, 8]), window=st.one_of(st.none(), st.integers(1, 50)))
def test_every_index_once_and_within_budget(lengths, budget, multiple, window):
    batches = plan_batches(lengths, budget, multiple=multiple, window=window)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert b, "no empty batches"
        cost = padded_tokens([lengths[i] for i in b], multiple)
        assert cost <= budget or len(b) == 1


def test_short_pairs_form_large_batches():
    assert [len(b) for b in plan_batches([20] * 100, 1200)] == [60, 40]
    assert [len(b) for b in plan_batches([60] * 50, 1200)] == [20, 20, 10]


def test_padding_waste_is_small_compared_with_fixed_batches_in_input_order():
    import random

    rng = random.Random(0)
    lengths = [min(98, max(10, int(rng.lognormvariate(3.55, 0.31)))) for _ in range(2000)]
    real = sum(lengths)
    planned = sum(padded_tokens([lengths[i] for i in b]) for b in plan_batches(lengths, 8192))
    fixed = sum(padded_tokens(lengths[i:i + 32]) for i in range(0, len(lengths), 32))
    assert real / planned > 0.94
    assert real / fixed < 0.6


def test_the_long_tail_gets_batches_of_its_own():
    lengths = [98] * 30 + [36] * 400
    batches = plan_batches(lengths, 8192)
    assert sorted(batches[0]) == list(range(30))
    greedy = plan_batches(lengths, 8192, tolerance=1.0)
    assert len(greedy[0]) == 8192 // 98  # without the early cut, 53 short pairs pad to 98


def test_longest_batch_comes_first_and_window_limits_sorting():
    lengths = [5, 50, 7, 40]
    assert plan_batches(lengths, 10_000) == [[1, 3, 2, 0]]
    assert plan_batches(lengths, 10_000, window=2) == [[1, 0], [3, 2]]


def test_a_pair_longer_than_the_budget_is_a_batch_of_its_own():
    assert plan_batches([100, 3], 64) == [[0], [1]]
    with pytest.raises(ValueError):
        plan_batches([1], 0)


def test_budget_halves_on_oom_relative_to_the_failed_batch():
    b = AdaptiveBudget(8192, floor=128)
    b.shrink(failed_tokens=8000)
    assert b.current == 4000
    b.shrink(failed_tokens=600)  # a batch smaller than the budget still gets split
    assert b.current == 300
    for _ in range(10):
        b.shrink(failed_tokens=b.current)
    assert b.current == 128  # never below one max-length pair


def test_budget_regrows_slowly_and_never_above_the_start():
    b = AdaptiveBudget(1000, floor=100, grow_after=3)
    b.shrink(1000)
    assert b.current == 500
    b.success()
    b.success()
    assert b.current == 500
    b.success()
    assert b.current == 550
    seen = []
    for _ in range(200):
        b.success()
        seen.append(b.current)
    assert max(seen) == 1000 and seen[-1] == 1000 == b.ceiling


def test_an_oom_resets_the_growth_streak():
    b = AdaptiveBudget(1000, floor=100, grow_after=2)
    b.shrink(1000)
    b.success()
    b.shrink(400)
    b.success()
    assert b.current == 200

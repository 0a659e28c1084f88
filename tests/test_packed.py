"""The packed layout's attention groups: every pair once, in runs, at the least cost."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from mgeo.worker.inference.packed import Packed, plan_groups  # noqa: E402


def _cost(lengths, runs, group_cost):
    return sum(group_cost + (end - start) * lengths[start] ** 2 for start, end in runs)


def _brute_force(lengths, group_cost):
    """The cheapest split by trying every set of cut points."""
    n = len(lengths)
    best = None
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = (0, *cuts, n)
            runs = list(zip(bounds, bounds[1:]))
            cost = _cost(lengths, runs, group_cost)
            best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(3, 128), min_size=1, max_size=9),
       st.sampled_from([0, 100, 4096, 10**6]))
def test_groups_cover_every_pair_in_runs_at_the_least_cost(raw, group_cost):
    lengths = np.array(sorted(raw, reverse=True))
    runs = plan_groups(lengths, group_cost)
    assert runs[0][0] == 0 and runs[-1][1] == len(lengths)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(runs, runs[1:] + [(None, None)])
               if b[0] is not None)
    assert _cost(lengths, runs, group_cost) == pytest.approx(_brute_force(lengths, group_cost))


def test_group_extremes_and_unsorted_input():
    lengths = np.array([90, 60, 60, 20, 20, 20])
    assert plan_groups(lengths, 10**9) == [(0, 6)]            # groups dear: one group
    assert plan_groups(lengths, 0) == [(0, 1), (1, 3), (3, 6)]  # free: one per length
    assert plan_groups(np.array([], dtype=np.int64)) == []
    with pytest.raises(ValueError, match="longest first"):
        plan_groups(np.array([5, 9]))


def test_packed_inputs_place_each_token_in_its_pairs_row():
    lengths = np.array([4, 3, 3, 2])
    ids = np.arange(12)
    positions = np.concatenate([np.arange(n) for n in lengths])
    batch = Packed.build(ids, np.zeros(12, dtype=np.int64), positions, lengths, group_cost=0)
    assert batch.firsts.tolist() == [0, 4, 7, 10]
    assert [(g.tokens, g.pairs, g.width) for g in batch.groups] == [
        ((0, 4), 1, 4), ((4, 10), 2, 3), ((10, 12), 1, 2)]
    assert all(g.slots is None and g.mask is None for g in batch.groups)  # no padding
    one = Packed.build(ids, np.zeros(12, dtype=np.int64), positions, lengths,
                       group_cost=10**9).groups
    assert len(one) == 1 and one[0].width == 4
    # Pair k's token j goes to row k, column j of the [4 x 4] attention layout.
    assert one[0].slots.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 13]
    assert one[0].mask[:, 0, 0, :].sum(1).tolist() == [4, 3, 3, 2]

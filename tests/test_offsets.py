"""Commit positions never pass unanswered work."""

from worker.offsets import OffsetTracker

TP = ("t", 0)


def test_commits_only_the_contiguous_delivered_prefix():
    tr = OffsetTracker()
    gen = tr.assign(TP)
    for off in range(10, 15):
        tr.add(TP, off)
    tr.done(TP, 12, gen)
    tr.done(TP, 11, gen)
    assert tr.to_commit() == {}  # 10 is still in flight
    tr.done(TP, 10, gen)
    assert tr.to_commit() == {TP: 13}
    tr.committed({TP: 13})
    assert tr.to_commit() == {} and tr.inflight == 2
    tr.done(TP, 14, gen)
    tr.done(TP, 13, gen)
    assert tr.to_commit() == {TP: 15} and tr.inflight == 0


def test_answers_of_an_old_generation_are_ignored():
    tr = OffsetTracker()
    old = tr.assign(TP)
    tr.add(TP, 0)
    tr.release(TP)
    new = tr.assign(TP)
    tr.add(TP, 0)
    tr.done(TP, 0, old)
    assert tr.to_commit() == {} and not tr.current(TP, old) and tr.current(TP, new)
    tr.done(TP, 0, new)
    assert tr.to_commit() == {TP: 1}


def test_release_forgets_inflight():
    tr = OffsetTracker()
    tr.assign(TP)
    tr.add(TP, 0)
    tr.add(("t", 1), 5)
    assert tr.inflight == 2
    tr.release(TP)
    assert tr.inflight == 1 and tr.partitions() == [("t", 1)]


def test_done_returns_the_offsets_it_completes_in_order():
    t = OffsetTracker()
    gen = t.assign(("in", 0))
    for off in (10, 11, 12):
        t.add(("in", 0), off)
    assert t.done(("in", 0), 12, gen) == []  # waits for 10 and 11
    assert t.done(("in", 0), 10, gen) == [10]
    assert t.done(("in", 0), 11, gen) == [11, 12]
    assert t.done(("in", 0), 11, gen - 1) == []  # a stale generation completes nothing


def test_rewind_goes_back_to_the_last_commit_and_drops_the_rest():
    t = OffsetTracker()
    tp = ("in", 0)
    gen = t.assign(tp)
    for off in range(5, 10):
        t.add(tp, off)
    assert t.rewind(tp) == 5  # nothing committed yet: back to the first offset read
    assert t.inflight == 0 and not t.current(tp, gen)
    gen = t.generation(tp)
    for off in range(5, 10):
        assert t.add(tp, off) == gen
    t.done(tp, 5, gen)
    t.done(tp, 6, gen)
    t.committed(t.to_commit())
    t.done(tp, 7, gen)
    assert t.rewind(tp) == 7  # the committed position, not the answered-but-uncommitted 8
    assert t.to_commit() == {} and t.inflight == 0

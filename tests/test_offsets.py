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

"""Commit positions never pass unanswered work; partitions given up complete nothing."""

from mgeo.worker.stream.offsets import OffsetTracker

TP = ("t", 0)


def test_commits_only_the_contiguous_completed_prefix():
    tr = OffsetTracker()
    tr.assign(TP)
    a = tr.add(TP, 10, 12, 2)  # offsets 10, 11
    b = tr.add(TP, 12, 15, 3)  # offsets 12..14
    assert tr.inflight == 5
    assert tr.complete(b)
    assert tr.to_commit() == {}  # 10 and 11 are still in flight
    assert tr.complete(a)
    assert tr.to_commit() == {TP: 15} and tr.inflight == 0
    tr.committed({TP: 15})
    assert tr.to_commit() == {}
    assert not tr.complete(a)  # once only


def test_gaps_in_offsets_commit_past_the_last_read():
    tr = OffsetTracker()
    tr.assign(TP)
    seg = tr.add(TP, 3, 9, 2)  # offsets 3 and 8 (transaction markers or compaction between)
    tr.complete(seg)
    assert tr.to_commit() == {TP: 9}


def test_segments_of_a_partition_given_up_complete_nothing():
    tr = OffsetTracker()
    tr.assign(TP)
    old = tr.add(TP, 0, 1, 1)
    assert tr.live(old)
    assert tr.release(TP) == 1
    tr.assign(TP)
    assert not tr.live(old) and not tr.complete(old)
    new = tr.add(TP, 0, 1, 1)
    assert tr.complete(new) and tr.to_commit() == {TP: 1}


def test_messages_of_a_partition_not_ours_are_not_tracked():
    tr = OffsetTracker()
    assert tr.add(("t", 7), 0, 5, 5) is None
    assert tr.inflight == 0 and not tr.owns(("t", 7))


def test_a_repeated_assignment_keeps_the_inflight_count_exact():
    tr = OffsetTracker()
    tr.assign(TP)
    tr.add(TP, 0, 10, 10)
    tr.assign(TP)  # assigned again without a revoke in between
    assert tr.inflight == 0
    tr.add(TP, 10, 12, 2)
    assert tr.inflight == 2 and tr.unanswered() == 2


def test_release_forgets_inflight():
    tr = OffsetTracker()
    tr.assign(TP)
    tr.assign(("t", 1))
    tr.add(TP, 0, 1, 1)
    tr.add(("t", 1), 5, 6, 1)
    assert tr.inflight == 2
    tr.release(TP)
    assert tr.inflight == 1 and tr.partitions() == [("t", 1)]


def test_dropped_segments_are_not_live():
    tr = OffsetTracker()
    tr.assign(TP)
    seg = tr.add(TP, 0, 3, 3)
    tr.drop([seg])
    assert not tr.live(seg)


def test_unconfirmed_counts_published_answers_only():
    tr = OffsetTracker()
    tr.assign(TP)
    seg = tr.add(TP, 0, 3, 3)
    assert tr.unconfirmed({TP}) == 0  # not yet handed to the producer
    for _ in range(3):
        tr.sent(seg)
    assert tr.unconfirmed({TP}) == 3
    assert [tr.confirmed(seg) for _ in range(3)] == [2, 1, 0]
    tr.complete(seg)
    assert tr.unconfirmed({TP}) == 0


def test_rewind_goes_back_to_the_last_commit_and_drops_the_rest():
    t = OffsetTracker()
    t.assign(TP)
    first = t.add(TP, 5, 10, 5)
    assert t.rewind(TP) == 5  # nothing committed yet: back to the first offset read
    assert t.inflight == 0 and not t.live(first)
    a = t.add(TP, 5, 7, 2)
    b = t.add(TP, 7, 10, 3)
    t.complete(a)
    t.committed(t.to_commit())
    t.complete(b)
    assert t.rewind(TP) == 7  # the committed position, not the completed-but-uncommitted 10
    assert t.to_commit() == {} and t.inflight == 0 and not t.live(b)

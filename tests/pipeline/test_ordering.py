"""The input merged in time order (consumer/pipeline/ordering.py): while partitions are
behind, a message waits until every partition with more to give has shown one at least as
late; a partition at its end, paused, or silent past the wait never holds the others."""

from __future__ import annotations

from confluent_kafka import TIMESTAMP_CREATE_TIME

from consumer.pipeline.ordering import TimeOrder

INTER, DEL = ("interactions", 0), ("deletions", 0)


class FakeMessage:
    def __init__(self, partition: tuple[str, int], offset: int, stamp: int) -> None:
        self._partition, self._offset, self._stamp = partition, offset, stamp

    def topic(self) -> str:
        return self._partition[0]

    def partition(self) -> int:
        return self._partition[1]

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return TIMESTAMP_CREATE_TIME, self._stamp


def reads(partition, stamps, first_offset=0):
    return [(FakeMessage(partition, first_offset + n, s), 0.0) for n, s in enumerate(stamps)]


def names(taken):
    return [(m.topic()[0], m.offset()) for m, _ in taken]


def test_messages_are_taken_in_timestamp_order_across_partitions():
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(DEL, [15, 40]))
    order.add(reads(INTER, [10, 20, 30, 40, 50]))
    taken = order.take(100, [INTER, DEL], lambda p: False, now=0.0)
    # Same millisecond: the interaction first (a deletion at T covers what came at T).
    assert names(taken) == [("i", 0), ("d", 0), ("i", 1), ("i", 2), ("i", 3), ("d", 1),
                            ("i", 4)]  # fmt: skip
    assert len(order) == 0


def test_a_partition_behind_holds_later_messages_until_it_gives_its_own():
    order = TimeOrder("deletions", wait_s=1.0)
    behind = {INTER}
    order.add(reads(DEL, [100]))
    # The broker holds interactions not fetched yet: the deletion waits for them.
    assert order.take(10, [INTER, DEL], lambda p: p in behind, now=0.0) == []
    assert order.waiting_for(now=0.4) == 0.6
    order.add(reads(INTER, [50, 90, 120]))
    behind.clear()
    taken = order.take(10, [INTER, DEL], lambda p: p in behind, now=0.5)
    assert names(taken) == [("i", 0), ("i", 1), ("d", 0), ("i", 2)]


def test_it_takes_at_most_the_room_asked_and_keeps_the_rest_in_order():
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(INTER, [1, 2, 3, 4]))
    order.add(reads(DEL, [2]))
    assert names(order.take(2, [INTER, DEL], lambda p: False, now=0.0)) == [("i", 0), ("i", 1)]
    assert names(order.take(9, [INTER, DEL], lambda p: False, now=0.0)) == [("d", 0), ("i", 2),
                                                                      ("i", 3)]  # fmt: skip


def test_a_partition_silent_past_the_wait_is_passed_over_and_counted():
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(DEL, [100, 200]))
    assert order.take(10, [INTER, DEL], lambda p: p == INTER, now=0.0) == []
    assert order.take(10, [INTER, DEL], lambda p: p == INTER, now=0.9) == []
    taken = order.take(10, [INTER, DEL], lambda p: p == INTER, now=1.1)
    assert names(taken) == [("d", 0), ("d", 1)] and order.passed_over == 1
    # Not waited for again until it gives something.
    order.add(reads(DEL, [300], first_offset=2))
    assert names(order.take(10, [INTER, DEL], lambda p: p == INTER, now=1.2)) == [("d", 2)]
    assert order.passed_over == 1


def test_paused_or_unassigned_partitions_never_hold_the_others():
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(DEL, [100]))
    # The caller leaves paused partitions out of the assigned ones.
    assert names(order.take(10, [DEL], lambda p: True, now=0.0)) == [("d", 0)]


def test_a_repositioned_partition_forgets_what_was_read_of_it():
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(INTER, [1, 2]))
    order.add(reads(DEL, [5]))
    order.drop([INTER])
    assert names(order.take(10, [INTER, DEL], lambda p: False, now=0.0)) == [("d", 0)]


def test_what_was_read_of_a_held_back_partition_waits_until_it_is_released():
    # A surge of bad input paused the interactions (or a gap holds them): what was already
    # read of them is not taken either, and the rest goes on without waiting for them.
    order = TimeOrder("deletions", wait_s=1.0)
    order.add(reads(INTER, [10, 20, 30]))
    order.add(reads(DEL, [15, 25]))
    taken = order.take(100, [DEL], lambda p: True, now=0.0, held_back={INTER})
    assert names(taken) == [("d", 0), ("d", 1)]
    assert not order.ready({INTER}) and order.ready()
    released = order.take(100, [INTER, DEL], lambda p: False, now=0.0)
    assert names(released) == [("i", 0), ("i", 1), ("i", 2)]

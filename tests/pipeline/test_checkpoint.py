"""The checkpoint on its own, against an in-memory broker: the commit order per batch
(state durable before `submit`, then every record acknowledged, then the offsets), the
order across overlapping batches, and what a refused record does."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from consumer.pipeline.checkpoint import AcknowledgementFailed, Checkpoint


class LocalProducer:
    """Takes records and acknowledges them only when told to (`deliver`), as a broker
    that answers later would; `poll` serves the acknowledgements that were released."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []
        self._pending: list[tuple[str, object, object]] = []
        self._released: list[tuple[object, KafkaError | None]] = []
        self.refuse: set[str] = set()  # topics whose records the broker rejects

    def produce(self, topic, key=None, value=None, headers=None, on_delivery=None) -> None:
        self.sent.append((topic, value))
        self._pending.append((topic, value, on_delivery))

    def deliver(self, count: int | None = None) -> None:
        count = len(self._pending) if count is None else count
        for topic, _value, callback in self._pending[:count]:
            error = KafkaError(KafkaError._MSG_TIMED_OUT) if topic in self.refuse else None
            self._released.append((callback, error))
        del self._pending[:count]

    def poll(self, timeout: float = 0) -> int:
        released, self._released = self._released, []
        for callback, error in released:
            callback(error, None)
        return len(released)


class Commits:
    def __init__(self) -> None:
        self.log: list[dict[tuple[str, int], int]] = []
        self.fail = False

    def __call__(self, offsets, asynchronous: bool) -> None:
        if self.fail:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        self.log.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.notes = [tp.metadata for tp in offsets]


def checkpoint(max_in_flight: int = 16) -> tuple[Checkpoint, LocalProducer, Commits]:
    producer, commits = LocalProducer(), Commits()
    note = lambda topic, partition: f"epoch-of-{topic}"  # noqa: E731
    return Checkpoint(producer, commits, note, max_in_flight=max_in_flight), producer, commits


def receipts(n: int) -> list:
    return [("unlearn-receipts", b"k", f"r{i}".encode(), None) for i in range(n)]


def test_offsets_are_committed_only_once_every_record_of_the_batch_is_acknowledged():
    cp, producer, commits = checkpoint()
    done = []
    cp.submit({("deletions", 0): 11}, receipts(3), on_done=lambda: done.append("a"))
    assert len(producer.sent) == 3 and commits.log == [] and done == []
    producer.deliver(2)
    cp.poll()
    assert commits.log == [] and cp.in_flight == 1  # one receipt still unacknowledged
    producer.deliver()
    cp.poll()
    assert commits.log == [{("deletions", 0): 11}] and done == ["a"] and cp.in_flight == 0
    assert commits.notes == ["epoch-of-deletions"]  # the partition's epoch goes with it


def test_a_later_batch_acknowledged_first_waits_for_the_one_before_it():
    cp, producer, commits = checkpoint()
    cp.submit({("deletions", 0): 5}, receipts(1))
    cp.submit({("deletions", 0): 9, ("interactions", 1): 40}, [])  # nothing to acknowledge
    assert commits.log == []  # batch 2 is complete, but batch 1 is not
    producer.deliver()
    cp.poll()
    # both at once, each partition at the furthest offset of the two
    assert commits.log == [{("deletions", 0): 9, ("interactions", 1): 40}]


def test_a_batch_without_records_commits_at_once():
    cp, _, commits = checkpoint()
    cp.submit({("interactions", 2): 100}, [])
    assert commits.log == [{("interactions", 2): 100}]


def test_a_refused_record_stops_the_service_without_committing_its_batch():
    cp, producer, commits = checkpoint()
    producer.refuse.add("unlearn-dlq")
    cp.submit({("deletions", 0): 3}, [("unlearn-dlq", b"k", b"bad", None)])
    producer.deliver()
    with pytest.raises(AcknowledgementFailed, match="unlearn-dlq"):
        cp.poll()
    assert commits.log == []
    with pytest.raises(AcknowledgementFailed):  # and nothing after it is taken
        cp.submit({("deletions", 0): 4}, [])


def test_a_failed_offset_commit_is_not_fatal_the_events_are_read_again():
    cp, producer, commits = checkpoint()
    commits.fail = True
    done = []
    cp.submit({("deletions", 0): 3}, receipts(1), on_done=lambda: done.append(1))
    producer.deliver()
    cp.poll()
    assert done == [1] and cp.in_flight == 0  # state and receipts are durable already


def test_submit_waits_when_too_many_batches_are_unacknowledged():
    cp, producer, commits = checkpoint(max_in_flight=2)
    cp.submit({("deletions", 0): 1}, receipts(1))
    cp.submit({("deletions", 0): 2}, receipts(1))
    waited = []
    original = producer.poll

    def poll(timeout: float = 0) -> int:  # the broker answers while submit waits
        if timeout > 0:
            waited.append(timeout)
            producer.deliver()
        return original(timeout)

    producer.poll = poll
    cp.submit({("deletions", 0): 3}, receipts(1))
    assert waited and commits.log[0] == {("deletions", 0): 2} and cp.in_flight == 1


def test_drain_commits_synchronously_or_reports_that_time_ran_out():
    cp, producer, commits = checkpoint()
    cp.submit({("deletions", 0): 7}, receipts(2))
    assert not cp.drain(timeout_s=0.05)  # nobody acknowledges
    producer.deliver()
    assert cp.drain(timeout_s=1.0) and commits.log == [{("deletions", 0): 7}]

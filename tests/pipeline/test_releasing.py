"""Step 2 of the commit order on its own (pipeline/releasing.py): a receipt is ready only
once its factors are acknowledged, held until then and released as they come; learning
alone waits a moment for the factors topic; a restore drops what was held."""

from __future__ import annotations

import pytest

from consumer.pipeline import releasing
from consumer.pipeline.releasing import Release
from consumer.receipts import Receipt


def receipt(n: int) -> Receipt:
    return Receipt(f"r{n}", "pair", "u", "i", 1, 0, 1.0, None, 1.0, 2.0, 1.0, 0.0,
                   f"deletions:0:{n}")  # fmt: skip


class Publisher:
    """The factors topic as the release sees it: which receipts it covers so far."""

    def __init__(self) -> None:
        self.acknowledged: set[str] = set()
        self.published = 0
        self.forgotten = False

    def publish(self, commits) -> int:
        self.published += 1
        return 3

    def drain(self, timeout_s: float) -> bool:
        return True

    def poll(self) -> None:
        pass

    def pending(self) -> bool:
        return False

    def covers(self, r: Receipt) -> bool:
        return r.request_id in self.acknowledged

    def forget(self) -> None:
        self.forgotten = True


def release_with(publisher: Publisher | None) -> tuple[Release, list]:
    seen: list = []
    made = Release(publisher, dict, lambda n, s: seen.append(("published", n)),
                   lambda n: seen.append(("held", n)), lambda: seen.append("redis"))  # fmt: skip
    return made, seen


def test_without_a_factors_topic_every_receipt_is_ready_at_once():
    release, _ = release_with(None)
    assert release.ready([receipt(1), receipt(2)]) == [receipt(1), receipt(2)]
    assert release.release() == [] and not release.holding


def test_a_receipt_waits_for_its_factors_and_leaves_when_they_are_acknowledged():
    publisher = Publisher()
    release, seen = release_with(publisher)
    publisher.acknowledged = {"r1"}
    assert release.ready([receipt(1), receipt(2)]) == [receipt(1)]
    assert release.holding and seen[-1] == ("held", 1)
    assert release.release() == []  # r2's factors not acknowledged yet
    publisher.acknowledged.add("r2")
    assert release.release() == [receipt(2)] and not release.holding


def test_learning_alone_waits_then_publishes_once(monkeypatch: pytest.MonkeyPatch):
    publisher = Publisher()
    release, seen = release_with(publisher)
    now = [100.0]
    monkeypatch.setattr(releasing.time, "monotonic", lambda: now[0])
    release.learned()
    release.publish_learning()
    assert publisher.published == 0
    now[0] += releasing.LEARNING_PUBLISH_S
    release.publish_learning()
    release.publish_learning()
    assert publisher.published == 1 and ("published", 3) in seen


def test_shards_that_went_and_a_restore_drop_what_was_held():
    publisher = Publisher()
    release, _ = release_with(publisher)
    release.ready([receipt(1), receipt(2)])
    release.keep_only(lambda r: r.request_id == "r2")
    publisher.acknowledged = {"r1", "r2"}
    assert release.release() == [receipt(2)]
    release.ready([receipt(3)])
    release.forget()
    assert not release.holding and publisher.forgotten

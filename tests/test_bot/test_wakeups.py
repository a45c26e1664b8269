"""The web chat wake-up a worker process publishes: what it carries, and what a receiver makes
of a payload it cannot use (the visitor's transcript is then read, never guessed)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from bot.wakeups import MAX_TARGET_BYTES, MAX_WAKEUP_BYTES, StoredLog, decode
from core.messages import StoredMessage

AT = datetime(2026, 3, 4, 10, 30, tzinfo=UTC)


def _msg(id_: int, direction: str = "in", text: str = "hi", **extra: object) -> StoredMessage:
    return StoredMessage(id_, direction, "customer" if direction == "in" else "bot", text, AT,
                         "en", "new", "open", **extra)  # type: ignore[arg-type]


def test_the_messages_of_each_visitor_come_back_in_commit_order() -> None:
    log = StoredLog()
    log.add("webchat/alice", [_msg(11), _msg(12, "out", "Shipping is free")], after=10)
    log.add("webchat/bob", [_msg(13, text="ciao")], after=None)
    log.add("webchat/alice", [_msg(14), _msg(15, "out")], after=12)
    log.add("webchat/carol", [_msg(16, attachments=({"ref": "/webchat/files/x.png",
                                                     "name": "x.png"},))], after=3)
    (argument,) = log.take()
    assert not log and log.take() == []
    got = list(decode(argument))
    assert [(t, a, [m.id for m in ms or ()]) for t, a, ms in got] == [
        ("webchat/alice", 10, [11, 12]), ("webchat/alice", 12, [14, 15]),
        ("webchat/bob", None, [13]), ("webchat/carol", 3, [16])]
    alice = got[0][2]
    assert alice is not None and alice[1] == _msg(12, "out", "Shipping is free")
    carol = got[3][2]
    assert carol is not None and carol[0].attachments == ({"ref": "/webchat/files/x.png",
                                                           "name": "x.png"},)


def test_something_stored_without_its_messages_sends_only_the_address() -> None:
    """A survey answer (no messages known), even after messages of the same batch: the
    receiver must read, so the whole target degrades to "read again"."""
    log = StoredLog()
    log.add("webchat/alice", [_msg(11)], after=10)
    log.add("webchat/alice")
    log.add("webchat/alice", [_msg(13)], after=12)
    assert list(decode(log.take()[0])) == [("webchat/alice", None, None)]


def test_a_visitor_with_too_much_text_gets_only_the_address_the_others_their_messages() -> None:
    log = StoredLog()
    log.add("webchat/alice", [_msg(11, text="x" * MAX_TARGET_BYTES)], after=10)
    log.add("webchat/bob", [_msg(12)], after=None)
    got = list(decode(log.take()[0]))
    assert got[0] == ("webchat/alice", None, None)
    assert got[1][0] == "webchat/bob" and got[1][2] is not None


def test_many_visitors_are_split_over_several_wake_ups_none_lost() -> None:
    log = StoredLog()
    for i in range(400):
        log.add(f"webchat/v{i:04d}", [_msg(i, text="y" * 400)], after=None)
    arguments = log.take()
    assert len(arguments) > 1 and all(len(a.encode()) <= MAX_WAKEUP_BYTES for a in arguments)
    targets = [t for a in arguments for t, _after, ms in decode(a) if ms]
    assert targets == [f"webchat/v{i:04d}" for i in range(400)]


def test_a_payload_that_does_not_decode_asks_for_a_read_or_is_ignored() -> None:
    good = ["webchat/alice", 10, [[11, "in", "customer", "hi", AT.isoformat(), "en", "new",
                                   "open", []]]]
    bad_message = ["webchat/bob", 10, [[12, "sideways", "customer", "hi", AT.isoformat(),
                                        None, None, "open", []]]]
    bad_after = ["webchat/carol", "10", good[2]]
    bad_date = ["webchat/dave", 10, [[13, "in", "customer", "hi", "yesterday", None, None,
                                      "open", []]]]
    argument = orjson.dumps([good, bad_message, bad_after, bad_date, ["short"], 7]).decode()
    got = list(decode(argument))
    assert [(t, a, ms is not None) for t, a, ms in got] == [
        ("webchat/alice", 10, True), ("webchat/bob", None, False),
        ("webchat/carol", None, False), ("webchat/dave", None, False)]
    assert list(decode("not json")) == [] and list(decode('{"a": 1}')) == []

"""What a process tells the others after a commit: which visitors' transcripts grew, and by what.

A worker process stores the web chat's messages (the customer's and the bot's replies) in its
transaction; the page of that visitor long-polls the web process. The wake-up it publishes
(bot/redis_queue.py `RedisWakeups`, topic "stored") carries those messages, so the web process
extends what it knows of the visitor's transcript instead of reading it again:

    stored [[target, after, messages], ...]

`target` is "channel/address"; `after` is the conversation's newest message id before these
(null: they opened a new conversation); `messages` are the committed messages as
`StoredMessage` fields, or null when they are not known (a survey answer) or too big to carry.
The receiving channel extends its tail only when `after` is exactly where its tail ends
(channels/webchat.py `replies_stored`); anything else, a null, or a payload it cannot decode
makes it forget what it knew and read, so a lost, late or reordered wake-up costs a read,
never a message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from channels.base import Channel
from core.messages import StoredMessage

log = logging.getLogger(__name__)
#: encoded bytes of one target's messages above which only the address is sent
MAX_TARGET_BYTES = 16_000
#: bytes per published wake-up; more targets go in further wake-ups, in order
MAX_WAKEUP_BYTES = 64_000

Segment = tuple[int | None, tuple[StoredMessage, ...]]


class StoredLog:
    """The web chat messages committed by one batch, per target, until they are published."""

    def __init__(self) -> None:
        #: target -> segments in commit order; None: something was stored that we cannot carry
        self._targets: dict[str, list[Segment] | None] = {}

    def __bool__(self) -> bool:
        return bool(self._targets)

    def add(self, target: str, messages: Sequence[StoredMessage] = (),
            after: int | None = None) -> None:
        """`messages` were committed for `target` after message `after` of their conversation;
        no messages: something was committed that the receiver must read."""
        if not messages:
            self._targets[target] = None
            return
        segments = self._targets.setdefault(target, [])
        if segments is not None:
            segments.append((after, tuple(messages)))

    def take(self) -> list[str]:
        """The wake-up arguments for what was logged (JSON, at most `MAX_WAKEUP_BYTES` each
        unless one target alone is bigger), and forget it."""
        targets, self._targets = self._targets, {}
        out: list[str] = []
        chunk: list[bytes] = []
        size = 0
        for target in sorted(targets):
            item = _encode_target(target, targets[target])
            if chunk and size + len(item) > MAX_WAKEUP_BYTES:
                out.append(_join(chunk))
                chunk, size = [], 0
            chunk.append(item)
            size += len(item) + 1
        if chunk:
            out.append(_join(chunk))
        return out


def _join(items: list[bytes]) -> str:
    return (b"[" + b",".join(items) + b"]").decode()


def _encode_target(target: str, segments: list[Segment] | None) -> bytes:
    if segments is not None:
        encoded = orjson.dumps([[target, after, [_fields(m) for m in messages]]
                                for after, messages in segments])[1:-1]
        if len(encoded) <= MAX_TARGET_BYTES:
            return encoded
    return orjson.dumps([target, None, None])


def _fields(m: StoredMessage) -> list[Any]:
    return [m.id, m.direction, m.author, m.text, m.created_at.isoformat(), m.language,
            m.stage, m.conversation_status, list(m.attachments)]


def extend_transcripts(channels: Mapping[str, Channel], argument: str) -> None:
    """A "stored" wake-up from another process: each channel extends what it knows of the
    visitor's transcript, or forgets it and reads when it cannot."""
    for target, after, messages in decode(argument):
        name, _, address = target.partition("/")
        channel = channels.get(name)
        if channel is not None and address:
            channel.replies_stored(address, messages or (), after=after)


def wake_readers(channels: Mapping[str, Channel], targets: str) -> None:
    """A "replies" wake-up (what a process of an earlier version publishes): something was
    stored for these "channel/address" pairs, read it."""
    for target in targets.split():
        name, _, address = target.partition("/")
        channel = channels.get(name)
        if channel is not None and address:
            channel.replies_stored(address)


def decode(argument: str) -> Iterator[tuple[str, int | None, tuple[StoredMessage, ...] | None]]:
    """(target, after, messages or None) of a "stored" wake-up, in order. A part that does
    not decode comes back as (target, None, None) when its target is readable, else not at
    all; a wake-up that does not decode at all yields nothing (the readers' safety-net
    re-read remains)."""
    try:
        parts = orjson.loads(argument)
    except orjson.JSONDecodeError:
        log.warning("undecodable web chat wake-up ignored")
        return
    if not isinstance(parts, list):
        return
    for part in parts:
        if not isinstance(part, list) or len(part) != 3 or not isinstance(part[0], str):
            continue
        target, after, raw = part
        try:
            messages = None if raw is None else tuple(_message(m) for m in raw)
            if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
                raise TypeError("after")
        except (TypeError, ValueError):
            yield target, None, None
            continue
        yield target, after, messages or None


def _message(fields: Any) -> StoredMessage:
    (id_, direction, author, text, created_at, language, stage, status,
     attachments) = fields
    if not isinstance(id_, int) or isinstance(id_, bool) or direction not in ("in", "out"):
        raise TypeError("id or direction")
    for value in (author, text, status):
        if not isinstance(value, str):
            raise TypeError("text field")
    for value in (language, stage):
        if value is not None and not isinstance(value, str):
            raise TypeError("optional text field")
    if not isinstance(attachments, list) or not all(isinstance(a, dict) for a in attachments):
        raise TypeError("attachments")
    return StoredMessage(id_, direction, author, text, datetime.fromisoformat(created_at),
                         language, stage, status, tuple(attachments))

"""Reading requests at the edge: raw bytes first, then strict decoding, each failure a 4xx.

Webhooks verify their signature over the raw bytes these functions return, and only then
decode them. Whatever cannot be decoded (a bogus Content-Encoding, a body that is not UTF-8,
JSON that is not an object) is the sender's fault: an `InputError`, never a 500. Text that
reaches the queue is valid Unicode that every database stores (`clean_text`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDict

from channels.base import InboundMessage
from core.errors import InputError

#: NUL and the C0/C1 controls other than tab, newline and carriage return
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")
#: set on a request whose scheme or host came from a trusted proxy (bot/proxies.py)
FORWARDED: web.RequestKey[bool] = web.RequestKey("forwarded", bool)
#: the largest id a database column holds (64-bit signed)
MAX_ID = 2**63 - 1


async def read_body(request: web.Request) -> bytes:
    """The body as sent (after Content-Encoding), or a 400 when it cannot be read."""
    try:
        return await request.read()
    except web.HTTPException:
        raise
    except (HttpProcessingError, RequestPayloadError, ValueError, OSError) as exc:
        raise InputError(f"the request body cannot be read: {type(exc).__name__}") from None


def decode_utf8(body: bytes, what: str = "the body") -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not valid UTF-8") from None


def json_value(body: bytes) -> Any:
    """Any JSON value from `body`, or a 400 saying what is wrong with it."""
    try:
        return orjson.loads(body)  # strict: no lone surrogates, no invalid UTF-8
    except orjson.JSONDecodeError:
        raise InputError("the body is not valid JSON (UTF-8, no lone surrogates)") from None


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object from `body`, or a 400 saying what is wrong with it."""
    value = json_value(body)
    if not isinstance(value, dict):
        raise InputError("the body must be a JSON object")
    return value


def form_fields(body: bytes, content_type: str) -> MultiDict[str]:
    """An application/x-www-form-urlencoded body, strictly decoded."""
    if content_type != "application/x-www-form-urlencoded":
        raise InputError("send application/x-www-form-urlencoded", status=415)
    text = decode_utf8(body)
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                          encoding="utf-8", errors="strict", max_num_fields=1000)
    except (ValueError, UnicodeDecodeError):
        raise InputError("the form is malformed or not UTF-8") from None
    return MultiDict(pairs)


def clean_text(text: str) -> str:
    """`text` as every database stores it: lone surrogates become U+FFFD, NUL and other
    control characters are dropped (tab and newlines stay)."""
    if _SURROGATES.search(text):
        text = _SURROGATES.sub("\ufffd", text)
    return _CONTROLS.sub("", text)


def has_bad_characters(text: str) -> bool:
    """True for text a person cannot have typed: lone surrogates, NUL, control characters."""
    return bool(_SURROGATES.search(text) or _CONTROLS.search(text))


def id_param(raw: str, name: str) -> int:
    """A database id from a path or form value: 1..2**63-1, or a 400."""
    if not raw.isdigit() or len(raw) > 19 or not 0 < int(raw) <= MAX_ID:
        raise InputError(f"'{name}' must be a positive integer id")
    return int(raw)


def clean_message(message: InboundMessage) -> InboundMessage:
    """`message` with every string the queue stores made storable (see `clean_text`), so a
    platform's odd character cannot turn into a message that fails forever."""
    changes: dict[str, Any] = {}
    for name in ("external_id", "address", "text", "display_name", "email", "phone", "thread",
                 "sender", "raw_ref"):
        value = getattr(message, name)
        if isinstance(value, str) and has_bad_characters(value):
            changes[name] = clean_text(value)
    if message.meta and _has_bad_strings(message.meta):
        changes["meta"] = _cleaned(message.meta)
    return dataclasses.replace(message, **changes) if changes else message


def _has_bad_strings(value: Any) -> bool:
    if isinstance(value, str):
        return has_bad_characters(value)
    if isinstance(value, dict):
        return any(_has_bad_strings(k) or _has_bad_strings(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_bad_strings(v) for v in value)
    return False


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {_cleaned(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cleaned(v) for v in value]
    return value

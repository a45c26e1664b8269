"""Language guess: picks which answer text a customer gets."""

from __future__ import annotations

import time

import pytest

from faq.language import detect_language


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ciao", "it"),
        ("grazie", "it"),
        ("reso", "it"),
        ("spedizione", "it"),
        ("Dov'è il mio ordine?", "it"),
        ("vorrei sapere quando arriva il pacco", "it"),
        ("hello", "en"),
        ("refund", "en"),
        ("Where is my order?", "en"),
        ("I want to talk to a person", "en"),
        ("ขอคุยกับพนักงาน", "th"),
        ("สั่ง iPhone case ไปเมื่อวาน ยังไม่ได้ของ", "th"),
    ],
)
def test_detects_language(text: str, expected: str) -> None:
    assert detect_language(text) == expected


def test_no_evidence_gives_the_default() -> None:
    assert detect_language("12345", default="it") == "it"
    assert detect_language("", default="th") == "th"


def test_is_fast() -> None:
    texts = ["Where is my order #12345?", "Dov'è il mio ordine?", "ขอคุยกับพนักงาน"] * 1000
    started = time.perf_counter()
    for text in texts:
        detect_language(text)
    assert (time.perf_counter() - started) / len(texts) < 100e-6

"""Italian and Thai customers as they really write, on the sample FAQ and on FAQs written in one
language; what the admin tools show about it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from faq import thai
from faq.language import detect_language
from faq.loader import lint_faq_dir
from faq.matcher import CALIBRATION_BOUNDS, DEFAULT_THRESHOLD, Matcher
from faq.models import FaqEntry
from faq.normalize import tokenize

from .conftest import REPO_ROOT
from .test_cli import run_cli

needs_segmenter = pytest.mark.skipif(not thai.available(), reason="PyThaiNLP not installed")


@needs_segmenter
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("ค่าส่งเท่าไหร่ครับ", "shipping_costs"),  # polite particle
        ("ค่าส่งเท่าไหร่ครับบบบ 555", "shipping_costs"),  # stretched particle, laughter
        ("พัสดุของฉันอยู่ที่ไหน", "order_tracking"),  # "where is" also in the privacy entry
        ("อยากยกเลิกorderค่ะ", "cancel_order"),  # Thai and English in one run
        ("ยังไม่ได้รับของเลยค่ะะะ", "order_not_arrived"),
        ("dovè il mio ordine", "order_tracking"),  # elision typed without the apostrophe
        ("qunato costa la spedizone?", "shipping_costs"),  # typos
        ("vorrei annulare l ordine", "cancel_order"),
    ],
)
def test_thai_and_italian_questions_are_answered_with_the_right_entry(
    sample_matcher: Matcher, question: str, expected: str
) -> None:
    result = sample_matcher.match(question)
    assert (result.decision, result.faq_id) == ("answer", expected)


@needs_segmenter
def test_thai_particles_repeats_and_laughter_do_not_count_but_order_numbers_do() -> None:
    assert tokenize("ค่าส่งเท่าไหร่ครับ") == tokenize("ค่าส่งเท่าไหร่ค่ะะะ 555") == tokenize("ค่าส่งเท่าไหร่")
    assert "qorderq" in tokenize("ออเดอร์ 555123 ถึงไหนแล้วคะ")


def test_the_thai_segmenter_needs_no_network_or_download() -> None:
    """A fresh process with sockets disabled still cuts Thai into words (newmm's dictionary is
    in the wheel)."""
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('network disabled in this test')\n"
        "socket.socket = refuse\nsocket.create_connection = refuse\n"
        "from faq import thai\n"
        "print(thai.available(), '|'.join(thai.words('พัสดุของฉันอยู่ที่ไหนครับ')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    if not thai.available():
        pytest.skip("PyThaiNLP not installed")
    assert done.stdout.strip() == "True พัสดุ|ของ|ฉัน|อยู่|ที่ไหน"


ENGLISH_ONLY = [
    FaqEntry(id="order_tracking",
             questions=("Where is my parcel?", "How can I track my order?",
                        "Is there a tracking number for my package?"),
             answers={"en": "Use the tracking link.",
                      "it": "Usa il link di tracciamento del pacco.", "th": "ติดตามพัสดุได้จากลิงก์"}),
    FaqEntry(id="cancel_order",
             questions=("Can I cancel my order?", "I want to cancel an order",
                        "How do I cancel what I bought?"),
             answers={"en": "Write to us within 1 hour.",
                      "it": "Scrivici entro 1 ora per annullare.", "th": "ยกเลิกได้ภายใน 1 ชั่วโมง"}),
    FaqEntry(id="privacy",
             questions=("Where is your privacy policy?", "What do you do with my data?",
                        "Do you sell my personal data?"),
             answers={"en": "See /privacy.", "it": "Vedi /privacy.", "th": "ดูที่ /privacy"}),
]


@pytest.mark.parametrize(
    ("question", "expected"),
    [("dov'è il mio pacco?", "order_tracking"), ("vorrei annullare l'ordine", "cancel_order"),
     ("ยกเลิกออเดอร์ค่ะ", "cancel_order"), ("พัสดุของฉันอยู่ที่ไหน", "order_tracking")],
)
def test_an_entry_written_in_english_ranks_first_for_italian_and_thai(
    question: str, expected: str
) -> None:
    assert Matcher(ENGLISH_ONLY).match(question).candidates[0].entry_id == expected


def _english_only(entries: list[FaqEntry]) -> list[FaqEntry]:
    return [FaqEntry(id=e.id, questions=tuple(q for q in e.questions
                                              if detect_language(q) == "en"),
                     answers=e.answers, kind=e.kind, escalate=e.escalate) for e in entries]


@needs_segmenter
@pytest.mark.parametrize(
    ("question", "expected"),
    [("vorrei annullare l'ordine", "cancel_order"), ("il pacco è arrivato rotto", "damaged_item"),
     ("vorrei un rimborso", "refunds"), ("ยกเลิกออเดอร์ค่ะ", "cancel_order"),
     ("ขอใบกำกับภาษีหน่อยค่ะ", "invoice")],
)
def test_the_sample_faq_with_english_phrasings_only_answers_italian_and_thai(
    sample_entries: list[FaqEntry], question: str, expected: str
) -> None:
    result = Matcher(_english_only(sample_entries)).match(question)
    assert (result.decision, result.faq_id) == ("answer", expected)


def test_languages_the_faq_covers_keep_their_scores(sample_matcher: Matcher) -> None:
    # The shipped FAQ has phrasings in all three languages: no language needs a correction.
    assert all(scale == 1.0 for scale in sample_matcher.language_scales.values())


def test_an_english_only_faq_scales_up_italian_and_thai_questions_within_bounds(
    sample_entries: list[FaqEntry],
) -> None:
    # Measured on the entries' answers in each language: cross-language matches score low.
    english = _english_only(sample_entries)
    matcher = Matcher(english)
    scales = matcher.language_scales
    low, high = CALIBRATION_BOUNDS
    assert scales["en"] == 1.0 and scales["th"] > 1.2 and scales["it"] > 1.2
    assert all(low <= s <= high for s in scales.values())
    question = "ขอใบกำกับภาษีหน่อยค่ะ"
    scored = matcher.explain(question, limit=1)[0]
    raw = Matcher(english, calibrate=False).explain(question, limit=1)[0]
    assert scored.entry_id == raw.entry_id == "invoice"
    assert scored.score == pytest.approx(min(raw.score * scales["th"], 1.0))
    assert raw.score < matcher.threshold <= scored.score  # answered only thanks to the scale


def test_lint_warns_about_one_language_and_few_phrasings(
    write_faq: Callable[[str, str], Path],
) -> None:
    directory = write_faq(
        "a.yaml",
        "- id: returns\n  questions: ['Can I return an item?', 'How do returns work?']\n"
        "  answer: {en: Within 30 days., it: Entro 30 giorni., th: ภายใน 30 วัน}\n",
    )
    messages = [p.message for p in lint_faq_dir(directory) if p.level == "warning"]
    assert any("phrasings in en only" in m for m in messages), messages
    assert any("only 2 phrasing(s)" in m for m in messages), messages


def test_eval_shows_languages_the_curve_and_lists_what_to_fix(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    rows = [("Where is my order?", "order_tracking"), ("พัสดุของฉันอยู่ที่ไหน", "order_tracking"),
            ("ho bisogno di aiuto con una cosa strana", "size_guide"),
            ("weather in Rome?", None)]
    cases.write_text("".join(json.dumps({"text": t, "expected": e}) + "\n" for t, e in rows))
    done = run_cli("eval", str(cases))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    table = out[out.index("language  in scope"):out.index("threshold curve")]
    assert {line.split()[0] for line in table.splitlines()[2:] if line} == {"en", "it", "th"}
    assert f"{DEFAULT_THRESHOLD:.2f} (current)" in out
    handed = out[out.index("in-scope questions handed over: 1"):out.index("wrong answers:")]
    assert "size_guide (1)" in handed and "ho bisogno di aiuto con una cosa strana" in handed


def test_explain_shows_the_words_and_which_entries_share_them() -> None:
    done = run_cli("explain", "พัสดุของฉันอยู่ที่ไหนคะ")
    assert done.returncode == 0, done.stderr
    assert "language: th" in done.stdout
    assert "อยู่ (question word, half weight)" in done.stdout
    assert "~parcel: in 2 entries, shared with order_tracking" in done.stdout

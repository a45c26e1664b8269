"""Matching real customer phrasings to the sample FAQ, in English, Italian and Thai."""

from __future__ import annotations

import pytest

from faq.matcher import Matcher
from faq.models import FaqEntry

from .conftest import shared_data


@pytest.mark.parametrize(
    ("question", "entry_id"),
    [
        ("how much does shipping cost?", "shipping_costs"),
        ("Quanto costa spedire in Italia?", "shipping_costs"),
        ("dov'è il mio pacco??", "order_tracking"),
        ("where is my order #98765", "order_tracking"),
        ("vorrei annullare l'ordine 4455", "cancel_order"),
        ("il codice sconto non funziona", "discount_code"),
        ("posso pagare con paypal", "payment_methods"),
        ("ho dimenticato la mia password", "account_password"),
        ("quando ricevo il rimborso?", "refunds"),
        ("can I return a dress that doesnt fit", "returns"),
        ("wht size shoud i take", "size_guide"),  # typos
        ("ค่าจัดส่งเท่าไร", "shipping_costs"),  # Thai, no spaces, a different phrasing
        ("ของที่สั่งถึงไหนแล้วคะ", "order_tracking"),
        ("ลืมรหัสผ่านค่ะ", "account_password"),
        ("อยากคืนสินค้า", "returns"),
        ("จ่ายผ่านพร้อมเพย์ได้ไหมคะ", "payment_methods"),
    ],
)
def test_questions_reach_the_right_entry(
    sample_matcher: Matcher, question: str, entry_id: str
) -> None:
    result = sample_matcher.match(question)
    assert result.decision == "answer", (question, result)
    assert result.faq_id == entry_id
    assert 0.0 < result.score <= 1.0


@pytest.mark.parametrize(
    "question",
    ["voglio parlare con un operatore", "ขอคุยกับพนักงานหน่อยค่ะ", "can I talk to a human?"],
)
def test_asking_for_a_person_is_recognised_and_escalated(
    sample_matcher: Matcher, question: str
) -> None:
    result = sample_matcher.match(question)
    assert result.decision == "escalate"
    assert result.faq_id == "talk_to_human"


@pytest.mark.parametrize(
    "question", ["what's the weather in Rome tomorrow?", "", "!!!"]
)
def test_off_topic_is_not_answered(sample_matcher: Matcher, question: str) -> None:
    result = sample_matcher.match(question)
    assert result.decision == "escalate"
    assert result.entry is None


@pytest.mark.parametrize(("question", "entry"), [("ขอบคุณค่ะ", "thanks"), ("hello", "greeting"),
                                                  ("grazie mille", "thanks")])
def test_small_talk_reaches_its_small_talk_entry(sample_matcher: Matcher, question: str,
                                                  entry: str) -> None:
    result = sample_matcher.match(question)
    assert result.faq_id == entry and result.small_talk is not None
    assert result.confident_answer is None  # never an FAQ answer


def _entry(entry_id: str, questions: tuple[str, ...], negatives: tuple[str, ...] = ()) -> FaqEntry:
    return FaqEntry(id=entry_id, questions=questions, answers={"en": entry_id},
                    negatives=negatives)


def test_negatives_push_an_entry_down() -> None:
    cancel = ("how do I cancel my order", "cancel order", "I want to cancel my purchase")
    account = ("delete my account", "close my profile")
    plain = Matcher([_entry("cancel_order", cancel), _entry("delete_account", account)])
    assert plain.match("how do I cancel my account").faq_id == "cancel_order"
    guarded = Matcher([_entry("cancel_order", cancel, negatives=("cancel my account",)),
                       _entry("delete_account", account)])
    result = guarded.match("how do I cancel my account")
    assert result.faq_id != "cancel_order"
    assert guarded.match("please cancel my order").faq_id == "cancel_order"


def test_two_equally_good_entries_are_ambiguous() -> None:
    matcher = Matcher([_entry("a", ("where is my parcel",)), _entry("b", ("where is my parcel",))])
    result = matcher.match("where is my parcel")
    assert result.decision == "ambiguous"
    assert {c.entry_id for c in result.candidates[:2]} == {"a", "b"}


def test_threshold_decides_between_answer_and_escalate(sample_entries: list[FaqEntry]) -> None:
    question = "do you ship to japan"
    strict = Matcher(sample_entries, threshold=0.99)
    lenient = Matcher(sample_entries, threshold=0.1)
    assert strict.match(question).decision == "escalate"
    assert lenient.match(question).faq_id == "international_shipping"


def test_explain_shows_the_parts_of_each_score(sample_matcher: Matcher) -> None:
    top = sample_matcher.explain("Posso pagare con PayPal?", limit=3)
    assert top[0].entry_id == "payment_methods"
    assert len(top) == 3
    best = top[0]
    assert best.best_phrasing == "Posso pagare con PayPal?"
    assert best.phrasing_similarity == pytest.approx(1.0)
    assert 0 < best.centroid_similarity <= 1 and 0 < best.fuzzy_similarity <= 1
    assert top[0].score >= top[1].score >= top[2].score


def test_real_thai_questions_never_crash(sample_matcher: Matcher) -> None:
    path = shared_data("thai", "wisesight_questions.txt")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) > 500
    for line in lines:
        result = sample_matcher.match(line)
        assert 0.0 <= result.score <= 1.0
        assert result.decision in ("answer", "escalate", "ambiguous")


def test_empty_faq_escalates_everything() -> None:
    result = Matcher([]).match("where is my order")
    assert result.decision == "escalate" and result.entry is None


def test_matching_from_several_threads_gives_the_same_answers(sample_matcher: Matcher) -> None:
    from concurrent.futures import ThreadPoolExecutor

    questions = ["where is my order", "quanto costa la spedizione", "ลืมรหัสผ่าน",
                 "can I pay with paypal", "voglio fare un reso"] * 40
    serial = [sample_matcher.match(q).faq_id for q in questions]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda q: sample_matcher.match(q).faq_id, questions))
    assert parallel == serial


def test_coverage_counts_question_words_spread_over_several_phrasings() -> None:
    expiry = ("my card expires soon", "how do I renew it", "is the renewal free")
    lost = ("I lost my card", "my card was stolen", "block my card please")
    matcher = Matcher([_entry("card_expiry", expiry), _entry("lost_card", lost)])
    top = matcher.explain("card expires, how do I renew", limit=2)
    assert top[0].entry_id == "card_expiry"
    # every feature of the question is in some phrasing of card_expiry, none in one alone
    assert top[0].coverage == pytest.approx(1.0)
    assert top[0].phrasing_similarity < 0.9
    assert top[1].coverage < 0.2


def test_a_full_token_cache_still_gives_the_same_answers(
    sample_entries: list[FaqEntry], monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = ["where is my order #98765", "quanto costa la spedizione", "ลืมรหัสผ่าน",
                 "can I pay with paypal", "I don't know my password"]
    cached = Matcher(sample_entries)
    expected = [(r.faq_id, r.score) for r in map(cached.match, questions)]
    monkeypatch.setattr("faq.matcher.TOKEN_CACHE_SIZE", 0)
    uncached = Matcher(sample_entries)
    assert [(r.faq_id, r.score) for r in map(uncached.match, questions)] == expected
    assert not uncached._token_cache

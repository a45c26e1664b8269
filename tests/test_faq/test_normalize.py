"""Text normalisation: equal meaning should give equal features, in English and Italian."""

from __future__ import annotations

import pytest

from faq.normalize import FUTURE_TOKEN, STOPWORDS, extract, stem, tokenize


@pytest.mark.parametrize(
    ("variants"),
    [
        ("fee", "fees"),
        ("delivery", "deliveries"),
        ("apply", "applied"),
        ("ship", "ships", "shipped", "shipping"),
        ("charge", "charges", "charged", "charging"),
        ("cancel", "cancelled", "cancelling", "cancella", "cancellare"),
        ("install", "installed", "installs"),
        ("prenota", "prenotare", "prenotazione", "prenotazioni"),
        ("spedire", "spedito", "spedizione"),
        ("banca", "banche"),
        ("ordine", "ordini"),
    ],
)
def test_inflected_forms_share_a_stem(variants: tuple[str, ...]) -> None:
    assert len({stem(word) for word in variants}) == 1, [stem(w) for w in variants]


@pytest.mark.parametrize(
    ("different"), [("card", "car"), ("status", "stat"), ("address", "addre"), ("bus", "bu")]
)
def test_stems_do_not_merge_unrelated_words(different: tuple[str, str]) -> None:
    assert stem(different[0]) != different[1]


def test_italian_elisions_and_accents_become_plain_words() -> None:
    assert tokenize("Dov'è l'ordine? È arrivato all'indirizzo sbagliato") == [
        "dove", "e", "l", "ordine", "e", "arrivato", "all", "indirizzo", "sbagliato",
    ]


@pytest.mark.parametrize(
    ("elided", "full"),
    [("Dov'è il pacco?", "Dove è il pacco?"), ("com'era", "come era"), ("cos'è", "cosa è"),
     ("quand'è", "quando è")],
)
def test_elided_question_words_are_the_full_words(elided: str, full: str) -> None:
    assert tokenize(elided) == tokenize(full)


def test_italian_function_words_are_not_word_features() -> None:
    # "all'", "quest'", possessives and forms of avere/essere carry no intent, like "my", "is".
    for word in ("all", "sull", "quest", "mio", "mie", "ho", "sono", "favore"):
        assert word in STOPWORDS
    features = extract("Per favore, quest'ordine è il mio?", pairs=False)
    assert set(features.words) == set(extract("ordine", pairs=False).words) == {"~order"}


def test_a_question_of_stopwords_still_has_words() -> None:
    assert set(extract("can I?", pairs=False).words) == {"can", "i"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I don't have it", ["i", "do", "not", "have", "it"]),
        ("it can't be", ["it", "can", "not", "be"]),
        ("it won’t arrive", ["it", "will", "not", "arrive"]),
    ],
)
def test_english_negative_contractions_become_not(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_negation_is_a_word_feature_with_or_without_the_apostrophe() -> None:
    assert "not" in extract("I don't have my card", pairs=False).words
    assert "not" in extract("I dont have my card", pairs=False).words
    assert "not" not in extract("I have my card", pairs=False).words


def _words(text: str) -> set[str]:
    return set(extract(text, pairs=False).words)


@pytest.mark.parametrize(
    ("present", "future"),
    [
        ("arriva", "arriverà"),
        ("arriva", "arriverò"),
        ("arrivare", "arriveranno"),
        ("arriva", "arrivera'"),  # typed without accent keys
        ("spedire", "spediremo"),
        ("partire", "partirà"),
        ("costa", "costerà"),
        ("cerca", "cercherò"),  # -care and -gare verbs add an "h"
        ("spiega", "spiegherai"),
    ],
)
def test_italian_future_is_the_verb_plus_a_future_feature(present: str, future: str) -> None:
    assert _words(future) == _words(present) | {FUTURE_TOKEN}


@pytest.mark.parametrize("word", ["lettera", "sera", "stasera", "però", "pero'", "arriva"])
def test_words_that_only_look_like_a_future_stay_as_they_are(word: str) -> None:
    assert FUTURE_TOKEN not in _words(word)
    assert len(_words(word)) == 1  # the word itself (or its store concept), no tense


def test_essere_and_avere_in_the_future_are_tense_only() -> None:
    # "sarà", "avrò" carry the tense, like "will" does in English, and no content word.
    assert _words("sarà") == _words("avrò") == _words("will") == {FUTURE_TOKEN}
    assert _words("Quando arriverà?") >= {FUTURE_TOKEN}
    assert _words("When will it arrive?") >= {FUTURE_TOKEN}
    assert _words("I'll order it") >= {FUTURE_TOKEN}


def test_italian_conditional_shares_the_stem() -> None:
    assert _words("costerebbe") == _words("costa")

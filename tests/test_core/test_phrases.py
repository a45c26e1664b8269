"""The bot's own phrases: every key in every language, none empty, and the same
placeholders in each translation (a translator who drops `{when}` breaks the reply)."""

from __future__ import annotations

import re

import pytest

from core.phrases import BY_LANGUAGE, LANGUAGES, text_for

_PLACEHOLDER = re.compile(r"\{[a-z_]+\}|\$[a-z_]+")


def test_every_language_has_every_phrase() -> None:
    keys = {lang: set(phrases) for lang, phrases in BY_LANGUAGE.items()}
    assert set(keys) == set(LANGUAGES)
    assert keys["it"] == keys["en"] and keys["th"] == keys["en"]
    for lang, phrases in BY_LANGUAGE.items():
        assert all(text.strip() for text in phrases.values()), lang


@pytest.mark.parametrize("key", sorted(BY_LANGUAGE["en"]))
def test_translations_keep_the_placeholders(key: str) -> None:
    wanted = sorted(_PLACEHOLDER.findall(BY_LANGUAGE["en"][key]))
    for lang in LANGUAGES:
        assert sorted(_PLACEHOLDER.findall(BY_LANGUAGE[lang][key])) == wanted, (lang, key)


def test_an_unknown_language_falls_back_to_the_store_default_then_english() -> None:
    assert text_for("greeting", "de", "it") == BY_LANGUAGE["it"]["greeting"]
    assert text_for("greeting", "de", "fr") == BY_LANGUAGE["en"]["greeting"]
    with pytest.raises(KeyError):
        text_for("no_such_phrase", "en")

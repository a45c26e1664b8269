"""Every phrase the bot says in its own words, to customers and to staff, one module per
language (`en.py`, `it.py`, `th.py`) with the same keys: a translator edits one file."""

from __future__ import annotations

from collections.abc import Mapping

from core.phrases import en, it, th

LANGUAGES = ("en", "it", "th")
BY_LANGUAGE: Mapping[str, Mapping[str, str]] = {"en": en.PHRASES, "it": it.PHRASES,
                                                 "th": th.PHRASES}


def text_for(key: str, lang: str, default_lang: str = "en") -> str:
    """The phrase in `lang`, else in the store's default language, else in English."""
    for candidate in (lang, default_lang, "en"):
        found = BY_LANGUAGE.get(candidate, {}).get(key)
        if found:
            return found
    raise KeyError(f"no phrase {key!r}")


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def weekday_name(day: int, lang: str, default_lang: str = "en") -> str:
    """The name of `datetime.weekday()` day `day` (0 = Monday)."""
    return text_for(WEEKDAYS[day], lang, default_lang)


def variants(key: str) -> dict[str, str]:
    """The phrase in every language that has it."""
    return {lang: phrases[key] for lang, phrases in BY_LANGUAGE.items() if key in phrases}

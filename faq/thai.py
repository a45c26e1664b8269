"""Thai words for the matcher: PyThaiNLP's dictionary segmenter, particles and function words.

Thai is written without spaces, so a run of Thai letters must be cut into words before the
matcher can weigh them. PyThaiNLP's `newmm` engine does it with the dictionary the package ships
(no download, no model): about 30 µs per run, and runs are cached. Without PyThaiNLP the run is
kept whole and the matcher falls back to character grams.

What a customer adds to be polite (ครับ, ค่ะ, นะ, จ้า...) says nothing about the question and is
dropped; pronouns and the like are stopwords; question words (อยู่ที่ไหน "where is", ไหม, เท่าไหร่)
are function words: they count, at a reduced weight, so "พัสดุของฉันอยู่ที่ไหน" is decided by
พัสดุ (parcel), not by sharing "where is" with "where is the privacy policy".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from faq import keywords


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Polite and sentence-final particles, with their common spellings.
PARTICLES = _words(
    "ครับ คับ ครัช คร้าบ ฮะ ฮับ งับ ค่ะ คะ ค่า คร่ะ จ้า จ้ะ จ๊ะ จ๋า นะ น่ะ นะคะ นะครับ คะน่ะ เนอะ"
    " ละ ล่ะ สิ ซิ หน่อย ด้วย เลย จ้ะ อ่ะ อะ เหรอ หรอ แหละ"
)
# Pronouns, classifiers and glue words: the Thai side of the English/Italian stopwords.
STOPWORDS = _words(
    "ฉัน ผม ดิฉัน หนู เรา เค้า เขา คุณ ทาง ร้าน ของ ที่ ซึ่ง และ กับ แต่ ก็ จะ ได้ ให้ การ ความ"
    " นี้ นั้น เป็น คือ มี ไว้ อยาก ต้องการ ขอ ช่วย สอบถาม ถาม รบกวน หรือ แล้ว ยัง"
)
# Question words: kept, at FUNCTION_WEIGHT of their IDF. "How much" (เท่าไหร่) is one: Thai
# customers ask the price of every product with it ("Dior เท่าไรคะ"), and at full weight it
# sent them to the shipping-costs entry ("ค่าส่งเท่าไหร่"). "When" (เมื่อไหร่) keeps full weight.
FUNCTION_WORDS = _words(
    "ไหม มั้ย มั๊ย ไม๊ ที่ไหน ไหน อยู่ ยังไง อย่างไร อะไร ไร หรือเปล่า รึเปล่า บ้าง ได้ไหม ทำไม"
    " เท่าไหร่ เท่าไร กี่"
)
# Spellings of the same word, folded to one.
VARIANTS = {
    "มั้ย": "ไหม", "มั๊ย": "ไหม", "ไม๊": "ไหม", "เท่าไร": "เท่าไหร่", "เท่าไร่": "เท่าไหร่",
    "อย่างไร": "ยังไง", "เมื่อไร": "เมื่อไหร่", "รึเปล่า": "หรือเปล่า", "คับ": "ครับ",
    "ไซซ์": "ไซส์", "ไซด์": "ไซส์", "ออร์เดอร์": "ออเดอร์",
}


@lru_cache(maxsize=1)
def _segmenter() -> Callable[[str], list[str]] | None:
    """PyThaiNLP's newmm word segmenter, or None when the package is missing or broken."""
    try:
        from pythainlp.corpus.common import thai_words
        from pythainlp.tokenize import word_tokenize
        from pythainlp.util import dict_trie

        # The shipped dictionary plus the store words of faq/keywords.py ("โค้ดส่วนลด", "ไซส์"),
        # so they come out as one word.
        extra = keywords.THAI_WORDS | set(VARIANTS) | set(VARIANTS.values()) | FUNCTION_WORDS
        trie = dict_trie(set(thai_words()) | extra)
    except Exception:  # noqa: BLE001 - any failure means "no segmenter": fall back to grams
        return None

    def segment(text: str) -> list[str]:
        return list(word_tokenize(text, custom_dict=trie, engine="newmm", keep_whitespace=False))

    return segment


def available() -> bool:
    """True when Thai runs are cut into dictionary words (PyThaiNLP importable)."""
    return _segmenter() is not None


@lru_cache(maxsize=50_000)
def words(run: str) -> tuple[str, ...]:
    """The words of one Thai run, particles removed and spellings folded; cached."""
    segment = _segmenter()
    if segment is None:
        return (run,)
    out = []
    for word in segment(run):
        word = VARIANTS.get(word, word)
        if word and word not in PARTICLES:
            out.append(word)
    return tuple(out)

"""Text normalisation and feature extraction for the lexical matcher.

Both the FAQ phrasings and the customer's question go through the same functions, so what
matters is that equal meaning gives equal features: case, accents, punctuation, Italian
elisions ("dell'ordine" -> "dell ordine"), order numbers (#12345 -> one token), emoji, and Thai
text, which has no spaces between words: faq/thai.py cuts it into dictionary words (character
grams when PyThaiNLP is missing), drops polite particles, and marks question words.
Italian future-tense verbs keep their accent ("arriverà", not the "-era" of "lettera"): the
stemmer joins them with the verb's other forms and adds a future feature.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from faq import keywords, thai


def _words(text: str) -> list[str]:
    return text.split()


CHAR_SIZES = (4,)
ORDER_TOKEN = "qorderq"
NUMBER_TOKEN = "qnumq"
FUTURE_TOKEN = "qfutq"

_ORDER_ID = re.compile(r"#\s?\d+|\b[a-z]{0,3}\d{5,}\b")
_DIGIT = re.compile(r"\d")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_THAI_RUN = re.compile(r"[\u0e00-\u0e7f]+")
_TOKEN = re.compile(r"[a-z\u00df-\u024f]+|[\u0e00-\u0e7f]+|" + ORDER_TOKEN + "|" + NUMBER_TOKEN)
_ASCII_WORD = re.compile(r"[a-z]+")
# "don't", "can't", "isn't" -> "do not"...: "not" is a word; a lone "t" was noise.
_NOT_CONTRACTION = re.compile(r"n't\b")
_NEGATED_AUXILIARIES = frozenset(_words(
    "dont doesnt didnt cant couldnt wont wouldnt shouldnt isnt arent wasnt werent havent hasnt"
    " hadnt"
))
# The Italian future tense, the one inflection whose ending accent folding would hide: "-rà",
# "-rò" ("arriverà", "cercherò", "sarà"), also typed "-ra'", "-ro'" without accent keys. The
# accent is kept so the stemmer sees the tense; "però" is a conjunction.
_IT_FUTURE_ACCENT = re.compile(r"(?<=[a-z]{2}r)(?<!\bper)(?:([\u00e0\u00f2])|([ao])')(?![\w'])")
_IT_GRAVE = {"a": "\u00e0", "o": "\u00f2"}
_FUTURE_AUXILIARIES = frozenset(("will", "ll"))
# Question words elided before a vowel ("dov'è", "com'era", "cos'è", "quand'è") are the same
# words as "dove", "come", "cosa", "quando"; left as "dov", "com" they matched nothing.
_IT_ELIDED_QUESTION = re.compile(r"\b(dov|com|cos|quand)'(?=[^\W\d_])")
_IT_UNELIDED = {"dov": "dove ", "com": "come ", "cos": "cosa ", "quand": "quando "}
_NON_WORD = re.compile(r"[^\w\u0e00-\u0e7f]+")
_LATIN_ACCENT = re.compile(r"[\u0300-\u036f]")
# Thai letters typed three times or more for emphasis ("ค่ะะะ"); vowels and tone marks, which
# are never doubled in a word, from twice. Mai yamok (repeat the word) adds nothing to match.
_THAI_REPEAT = re.compile(r"([\u0e00-\u0e7f])\1{2,}|([\u0e30-\u0e3a\u0e47-\u0e4e])\2+")
# Laughter: "555" (ha-ha-ha), standalone or stuck to Thai letters; five digits or more apart
# from Thai could be an order number.
_THAI_LAUGH = re.compile(
    r"(?<![\d.,#])5{3,4}(?![\d.,])|(?<=[\u0e00-\u0e7f])5{3,}(?![\d.,])|\u0e46"
)
_THAI_CHAR = re.compile(r"[\u0e00-\u0e7f]")
# Question words: they say what kind of question it is, not what about, so the matcher gives
# them FUNCTION_WEIGHT of their IDF ("dov'è" -> "dove", "อยู่ที่ไหน"). Italian and Thai only:
# weighting English "where/what/how" too cost 0.6 point of CLINC150 in-scope answered at 10%
# out-of-scope and 0.2 of Banking77 top-1 (IDF over many English entries already does it).
# "How much" and "when" (quanto, quando) keep full weight in Italian: they tell a price question
# from a delivery-time one ("quanto ci mette ad arrivare?"); Thai's are in faq/thai.py.
FUNCTION_WORDS = frozenset(_words("dove cosa come quale quali perche chi")) | thai.FUNCTION_WORDS
FUNCTION_WEIGHT = 0.5

# Words that carry almost no meaning in a support question. Kept short on purpose: IDF
# weighting already discounts common words, this list only removes the noisiest ones. The
# Italian side mirrors the English one (articles, prepositions and their elided forms "all'",
# "sull'", "quest'", pronouns and possessives, forms of avere/essere and of the modal verbs,
# "per favore").
STOPWORDS = frozenset(
    _words(
    """
    a an the i me my we our you your it its is are am be been was were do does did to of in on
    at for with and or but so this that these those there here please hi hello hey can could
    would will should shall may might just
    il lo la i gli le un una uno di da del della dello dei degli delle al alla allo ai agli alle
    dal dalla dall dell nel nella nell sul sulla e ed o ma che mi ti ci si vi ne per con su
    l un c d
    all sull dallo dagli dalle nei negli nelle nello sui sugli sulle sullo col coi tra fra po
    quest quell questo questa questi queste quello quella quelli quelle
    io tu lui lei noi voi loro mio mia miei mie tuo tua tuoi tue suo sua suoi sue
    nostro nostra nostri nostre vostro vostra vostri vostre
    ho hai ha abbiamo avete hanno sono sei siamo siete sara saranno favore
    posso puoi puo possiamo potete possono potrei potresti potrebbe vorrei vuoi vuole voglio
    vogliamo devo devi deve dobbiamo dovrei
    saro avro avra potro potra dovro dovra vorro vorra
    """
    )
)

_IT_NOMINALISED = ("azioni", "azione", "izioni", "izione", "uzioni", "uzione")
# Future persons without an accent ("arriverai", "spediremo", "costeranno"): "-are" verbs take
# "-er-" too, "-care"/"-gare" verbs add an "h" ("cercheremo").
_IT_FUTURE_SUFFIXES = ("eranno", "iranno", "eremo", "iremo", "erete", "irete", "erai", "irai")
_IT_ACCENTED_FUTURE = ("er\u00e0", "er\u00f2", "ir\u00e0", "ir\u00f2", "r\u00e0", "r\u00f2")
# The conditional ("costerebbe", "arriverei") first, then infinitives, participles, vowels.
_IT_SUFFIXES = ("erebbero", "irebbero", "erebbe", "irebbe", "eremmo", "iremmo", "eresti",
                "iresti", "ereste", "ireste", "erei", "irei", "mente", "ando", "endo", "are",
                "ere", "ire", "ato", "ata", "ati", "ate", "ito", "ita", "iti", "ite", "o", "a", "i",
                "e")


def normalize(text: str) -> str:
    """Lowercase, strip Latin accents, map order ids and numbers to tokens, drop punctuation."""
    if text.isascii():
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'")
        text = _fold_accents(text)
        if _THAI_CHAR.search(text):
            # NFKC splits sara am (ำ) into nikhahit + sara aa: put it back, or "ทำ", "คำ",
            # "ชำระ" are no longer the dictionary's words.
            text = text.replace("\u0e4d\u0e32", "\u0e33")
            text = _THAI_REPEAT.sub(_one_letter, text)
            text = _THAI_LAUGH.sub(" ", text)  # "555" is laughter (ha-ha-ha), not a number
    if "'" in text:
        text = _IT_FUTURE_ACCENT.sub(_grave_accent, text)
        text = _IT_ELIDED_QUESTION.sub(_unelided, text)
        text = text.replace("can't", "can not").replace("won't", "will not")
        text = _NOT_CONTRACTION.sub(" not", text)
    if _DIGIT.search(text):
        text = _ORDER_ID.sub(f" {ORDER_TOKEN} ", text)
        text = _NUMBER.sub(f" {NUMBER_TOKEN} ", text)
    return " ".join(_NON_WORD.sub(" ", text.replace("_", " ")).split())


def _fold_accents(text: str) -> str:
    """Latin letters without their accents, except the accent of the Italian future tense."""
    kept = []
    if "\u00e0" in text or "\u00f2" in text:
        kept = [m.start() for m in _IT_FUTURE_ACCENT.finditer(text) if m.group(1)]
    decomposed = unicodedata.normalize("NFD", text)
    folded = unicodedata.normalize("NFC", _LATIN_ACCENT.sub("", decomposed))
    if not kept:
        return folded
    if len(folded) != len(text):  # letters that decompose into more than one (rare): give up
        return folded
    letters = list(folded)
    for at in kept:
        letters[at] = text[at]
    return "".join(letters)


def _one_letter(match: re.Match[str]) -> str:
    return match.group(1) or match.group(2)


def _unelided(match: re.Match[str]) -> str:
    return _IT_UNELIDED[match.group(1)]


def _grave_accent(match: re.Match[str]) -> str:
    """"arrivera'" -> "arriverà": an apostrophe after the future ending stands for the accent."""
    return match.group(1) or _IT_GRAVE[match.group(2)]


def future_stem(word: str) -> str | None:
    """The stem of an Italian future-tense verb ("arriverà", "spediremo" -> "arriv", "sped"),
    None for any other word. Contracted futures ("sarà", "avrò", "potrà") keep their letters."""
    if not word.endswith(_IT_ACCENTED_FUTURE):
        if not word.endswith(_IT_FUTURE_SUFFIXES):
            return None
        for suffix in _IT_FUTURE_SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                base = word[: -len(suffix)]
                return base[:-1] if base.endswith(("ch", "gh")) else base
        return None
    if word.endswith(_IT_ACCENTED_FUTURE[:4]) and len(word) >= 6:
        base = word[:-3]
        return base[:-1] if base.endswith(("ch", "gh")) else base
    return word[:-1] + ("a" if word.endswith("\u00e0") else "o")  # sarà -> sara


def stem(word: str) -> str:
    """A deliberately small stemmer for English and Italian: strip one common suffix.

    It only has to make "orders"/"ordered"/"ordine"/"ordini", "fee"/"fees",
    "delivery"/"deliveries", "shipped"/"ship" and "prenota"/"prenotazione" land on the same
    stem; char n-grams cover what it misses. Stems never go under 3 letters.
    """
    if len(word) <= 3 or not word.isascii():
        return word
    base = _strip_suffix(word)
    if len(base) >= 6 and base.endswith("ll"):
        base = base[:-1]  # cancelled, installs -> cancel, instal like cancel, install
    return base


def _strip_suffix(word: str) -> str:
    if word.endswith(("ies", "ied")) and len(word) >= 5:
        return word[:-3] + "y"  # deliveries, applied
    for suffix in ("ing", "edly", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            if len(base) >= 4 and base[-1] == base[-2] and base[-1] not in "lsz":
                base = base[:-1]  # shipped, topping -> ship, top
            return base
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        base = word[:-1]
        # charges -> charg, like charge below; but not "uses" -> "us"
        return base[:-1] if base.endswith("e") and len(base) >= 5 else base
    if word.endswith("ly") and len(word) >= 6:
        return word[:-2]
    for suffix in _IT_NOMINALISED:  # prenotazione -> prenot, like prenota / prenotare
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    for suffix in _IT_SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            base = word[: -len(suffix)]
            if suffix in ("e", "i") and base.endswith(("ch", "gh")):
                base = base[:-1]  # banche, luoghi -> banc, luog like banca, luogo
            return base
    return word


def thai_grams(run: str) -> list[str]:
    """Thai has no spaces: use overlapping character bigrams and trigrams as its "words"."""
    if len(run) <= 2:
        return [run]
    grams = [run[i : i + 2] for i in range(len(run) - 1)]
    grams += [run[i : i + 3] for i in range(len(run) - 2)]
    return grams


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """Sparse feature counts of one text, by kind: words, word pairs, char n-grams."""

    words: Counter[str]
    bigrams: Counter[str]
    chars: Counter[str]
    tokens: tuple[str, ...] = ()

    @property
    def sorted_text(self) -> str:
        """Tokens in alphabetical order: what word-order-blind fuzzy matching compares."""
        return " ".join(sorted(self.tokens))


@lru_cache(maxsize=100_000)
def analyze_token(token: str) -> tuple[tuple[str, ...], str | None, tuple[str, ...]]:
    """Features one token contributes: (word features, content key for pairs, char n-grams).

    Pure and cached: customers reuse the same few thousand words, so after warm-up a question
    costs one dictionary hit per word instead of building its n-grams again.
    """
    padded = f" {token} "
    chars = tuple(
        padded[i : i + size]
        for size in CHAR_SIZES
        if len(padded) >= size
        for i in range(len(padded) - size + 1)
    )
    if _THAI_RUN.fullmatch(token):
        if not thai.available():
            # No segmenter: short grams stand in for words; the longer char grams fill the
            # char group like for any other script.
            return tuple(thai_grams(token)), token, chars
        if token in thai.STOPWORDS:
            return (), None, chars
        if token in thai.FUNCTION_WORDS:
            # No char grams: a long question word ("เท่าไหร่", 8 letters) would otherwise
            # outweigh the short content words next to it ("ค่า", "ส่ง").
            return (token,), token, ()
        concepts = _CONCEPT_OF.get(token)
        if concepts:
            return concepts, concepts[0], chars
        return (token,), token, chars
    if token in _FUTURE_AUXILIARIES:  # English "will", "'ll": the future, as Italian "-rà"
        return (FUTURE_TOKEN,), FUTURE_TOKEN, chars
    if token in STOPWORDS:
        return (), None, chars
    if token in _NEGATED_AUXILIARIES:  # "dont", "cant" typed without the apostrophe
        return ("not",), "not", chars
    future = future_stem(token)
    if future is not None:  # Italian future tense: the verb, and the tense as a word of its own
        if future in STOPWORDS:
            return (FUTURE_TOKEN,), FUTURE_TOKEN, chars
        concepts = _CONCEPT_OF.get(future)
        if concepts:
            return (*concepts, FUTURE_TOKEN), concepts[0], chars
        return (future, FUTURE_TOKEN), future, chars
    stemmed = stem(token)
    concepts = _CONCEPT_OF.get(stemmed) if token not in keywords.NOT_CONCEPTS else None
    if concepts:  # a store word of faq/keywords.py: its concept, the same in every language
        return concepts, concepts[0], chars
    return (stemmed,), stemmed, chars


def _concept_table() -> dict[str, tuple[str, ...]]:
    """Word key (stem, or Thai word) -> the concept features of faq/keywords.py it stands for."""
    table: dict[str, list[str]] = {}
    for concept, words in keywords.CONCEPTS.items():
        for word in words.split():
            if _THAI_RUN.fullmatch(word):
                key = thai.VARIANTS.get(word, word)
            else:
                tokens = _TOKEN.findall(normalize(word))
                if len(tokens) != 1 or tokens[0] in STOPWORDS:
                    continue
                key = future_stem(tokens[0]) or stem(tokens[0])
            keys = table.setdefault(key, [])
            if f"~{concept}" not in keys:
                keys.append(f"~{concept}")
    return {key: tuple(concepts) for key, concepts in table.items()}


_CONCEPT_OF = _concept_table()
#: The word keys of FUNCTION_WORDS, as the matcher sees them ("where" -> "wher").
FUNCTION_KEYS = frozenset(
    word if _THAI_RUN.fullmatch(word) else stem(word) for word in FUNCTION_WORDS
)


def tokenize(text: str) -> list[str]:
    """Tokens of the normalised text (Latin words, Thai runs, order/number tokens)."""
    if text.isascii() and not _DIGIT.search(text) and "'" not in text:
        # Most questions: plain ASCII letters and punctuation, where normalising only lowers.
        return _ASCII_WORD.findall(text.lower())
    tokens = _TOKEN.findall(normalize(text))
    if not _THAI_CHAR.search(text):
        return tokens
    out: list[str] = []
    for token in tokens:
        if _THAI_RUN.fullmatch(token):
            out.extend(thai.words(token))
        else:
            out.append(token)
    return out


def extract(text: str, *, pairs: bool = True) -> TextFeatures:
    """Features of `text`: stemmed words without stopwords, word pairs and char n-grams.

    Char n-grams are taken inside each padded word (" word "), which tolerates typos and
    morphology; Thai runs contribute their character grams as words. `pairs=False` skips the
    word pairs for callers that give them no weight.
    """
    tokens = tokenize(text)
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    content: list[str] = []
    for token in tokens:
        word_keys, content_key, char_keys = analyze_token(token)
        words.update(word_keys)
        chars.update(char_keys)
        if content_key is not None:
            content.append(content_key)
    bigrams: Counter[str] = (
        Counter(f"{a} {b}" for a, b in pairwise(content)) if pairs else Counter()
    )
    if not words and tokens:  # a question made only of stopwords ("can I?") still needs words
        words.update(tokens)
    return TextFeatures(words=words, bigrams=bigrams, chars=chars, tokens=tuple(tokens))

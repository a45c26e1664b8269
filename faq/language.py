"""Guess the language of a customer message: Thai, Italian or English.

The bot only needs to pick which answer text to send, so a dependency-free heuristic that runs
in microseconds beats a model: Thai is recognised by its script, Italian by stopwords, typical
word endings and a short list of store words that often arrive alone ("reso", "spedizione").
"""

from __future__ import annotations

import re


def _words(text: str) -> list[str]:
    return text.split()


_THAI_CHAR = re.compile(r"[\u0e00-\u0e7f]")
_LATIN_LETTER = re.compile(r"[a-zà-ÿ]")
_WORD = re.compile(r"[a-zà-ÿ]+(?:'[a-zà-ÿ]+)?")

_ITALIAN_WORDS = frozenset(
    _words(
    """
    a ad al alla alle allo ai agli all anche ancora avete avere c che chi ci come con cosa cui
    da dal dalla dai dei del della delle dello devo di dove dovrei e è ed gli ha hai ho i il in io
    la le lo loro ma mi mia mie miei mio ne nel nella nei non o per perché perche più piu posso
    può puo quale quali quando quanto quanta quanti quante questo questa qui se si sono su sul
    sulla tra tu tua tuo un una uno vi voglio vorrei vostro vostra è
    ciao salve buongiorno buonasera grazie prego scusa scusate aiuto
    ordine ordini spedizione spedizioni consegna reso resi rimborso pagamento pagare carta
    taglia taglie prezzo prezzi negozio acquisto account parola conto fattura fatture sconto
    codice buono regalo punti cambio cambiare annullare cancellare arrivato arrivo pacco
    disponibile operatore persona parlare recensione amico
    """
    )
)

_ENGLISH_WORDS = frozenset(
    _words(
    """
    a about am an and are at be can could did do does for from have hello hi how i if in is it
    me my no not of on or please should so that the there this to want was what when where which
    who why will with would you your yes thanks thank
    order orders shipping delivery refund return returns payment pay card size sizes price store
    account password invoice discount code gift points exchange cancel arrived parcel package
    available agent human person talk speak review friend track tracking
    """
    )
)

# Endings that are common in Italian words and rare in English ones.
_ITALIAN_ENDINGS = ("zione", "zioni", "mente", "are", "ere", "ire", "ato", "ata", "ito", "ita",
                    "etto", "etta", "ino", "ina", "oni", "ggi", "gli", "cchi", "zza")


def detect_language(text: str, default: str = "en") -> str:
    """Return "th", "it" or "en" for `text`; `default` when nothing hints either way.

    Thai wins as soon as Thai letters outnumber Latin ones. Otherwise every word votes: a known
    stopword or store word counts double, an Italian-looking ending or accent counts once.
    """
    thai = len(_THAI_CHAR.findall(text))
    lowered = text.lower()
    if thai and thai >= len(_LATIN_LETTER.findall(lowered)):
        return "th"
    italian = english = 0.0
    for word in _WORD.findall(lowered.replace("’", "'")):
        if "'" in word:  # l'ordine, dell'articolo, c'è: Italian elision
            italian += 2
            continue
        in_it = word in _ITALIAN_WORDS
        in_en = word in _ENGLISH_WORDS
        if in_it and not in_en:
            italian += 2
        elif in_en and not in_it:
            english += 2
        elif not in_it and not in_en:
            if any(ch in word for ch in "àèéìòù"):
                italian += 1.5
            elif word.endswith(_ITALIAN_ENDINGS) or (len(word) > 3 and word[-1] in "aeio"
                                                      and word[-2] not in "aeiouy"):
                italian += 0.5
            elif len(word) > 2 and word[-1] not in "aeiou":
                english += 0.5
    if italian > english:
        return "it"
    if english > italian:
        return "en"
    return default

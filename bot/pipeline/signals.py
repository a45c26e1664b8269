"""What a message says beyond its FAQ match, in English, Italian and Thai: pure text tests.

Each detector is a small ordered list of patterns per language, checked on the raw text (Thai
has no spaces between words, so its patterns are plain substrings). They are the safety net
that works with any FAQ: a store's FAQ may lack a complaint or a greeting entry, but the bot
must still apologise to an angry customer and must never hand "thanks!" to a person.
"""

from __future__ import annotations

import re
import unicodedata

_FLAGS = re.IGNORECASE | re.UNICODE


def _compile(patterns: dict[str, str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, _FLAGS) for p in patterns.values())


# Complaints and churn signals: anger, repeated failure, leaving. "I want to cancel my order"
# is a question the FAQ answers; "cancel everything", "late again", "never again" are not.
_COMPLAINT = _compile({
    "en": r"\b(?:late|delayed|wrong|broken|missing)\s+again\b"
          r"|\b(?:third|fourth|fifth|3rd|4th|5th|\d+(?:st|nd|rd|th)?)\s+time\b"
          r"|\bcancel\s+(?:everything|it\s+all|all\s+(?:my\s+)?orders)\b"
          r"|\bnever\s+(?:again|(?:buy|buying|order|ordering|shop|shopping)\b.*\bagain)\b"
          r"|\bworst\s+(?:service|shop|store|company|experience|customer\s+service)\b"
          r"|\bworst\b.*\bever\b"
          r"|\b(?:this|that|it)\s+is\s+(?:ridiculous|unacceptable|a\s+joke|a\s+scam|outrageous)\b"
          r"|\b(?:unacceptable|disgusting|scam|fraud|furious|fed\s+up|sick\s+of)\b"
          r"|\b(?:refund|money\s+back)\s+(?:now|immediately|right\s+now|asap)\b"
          r"|\bi\s+want\s+my\s+money\s+back\b|\bchargeback\b|\blawyer\b|\bterrible\b",
    "it": r"\b(?:ancora|di\s+nuovo)\s+in\s+ritardo\b|\bennesim[oa]\s+(?:volta|ritardo)\b"
          r"|\b(?:terza|quarta|quinta)\s+volta\b"
          r"|\b(?:annull|cancell)\w*\s+tutto\b"
          r"|\bmai\s+pi[uù]\b|\brimborso\s+(?:subito|immediato|adesso)\b"
          r"|\b(?:servizio|negozio|assistenza)\s+(?:pessim[oa]|vergognos[oa]|scandalos[oa])\b"
          r"|\b(?:pessimo|pessima|vergogna|truffa|truffatori|inaccettabile|scandaloso|"
          r"stufo|stufa|avvocato)\b|\brivoglio\s+i\s+(?:miei\s+)?soldi\b"
          r"|\bvoglio\s+i\s+miei\s+soldi\b",
    "th": r"แย่มาก|ห่วย|ผิดหวัง|โกง|หลอกลวง|ไม่ซื้ออีก|ช้าอีกแล้ว|ส่งช้าอีก|ครั้งที่สาม"
          r"|ยกเลิกทั้งหมด|ยกเลิกหมดเลย|คืนเงินเดี๋ยวนี้|คืนเงินด่วน|บริการแย่|แย่ที่สุด|เสียความรู้สึก",
})

# The customer says the last answer did not help (a repeat, whatever the words).
_NOT_HELPED = _compile({
    "en": r"\b(?:that|this|it|you)\s+(?:does\s*n[o']?t|did\s*n[o']?t|do\s*n[o']?t|does\s+not|"
          r"did\s+not)\s+(?:answer|help|make\s+sense)\b"
          r"|\bnot\s+what\s+i\s+(?:asked|meant|need(?:ed)?)\b|\bthat'?s\s+not\s+my\s+question\b"
          r"|\bi\s+(?:still\s+)?(?:don'?t|do\s+not)\s+understand\b|\bno\s+help\b"
          r"|\byou\s+(?:did\s*n[o']?t|didn't)\s+answer\b|\buseless\s+answer\b",
    "it": r"\bnon\s+ho\s+capito\b|\bnon\s+(?:mi\s+)?(?:hai|ha)\s+risposto\b"
          r"|\bnon\s+[eè]\s+quello\s+che\s+(?:ho\s+chiesto|intendevo|cercavo)\b"
          r"|\bnon\s+mi\s+(?:aiuta|serve|[eè]\s+utile)\b"
          r"|\bnon\s+risponde\s+alla\s+(?:mia\s+)?domanda\b|\bnon\s+capisco\b",
    "th": r"ไม่เข้าใจ|ไม่ได้ตอบ|ไม่ตรงคำถาม|ไม่ใช่ที่ถาม|ไม่ช่วยเลย|ไม่ได้ช่วย|ตอบไม่ตรง",
})

# Small talk the bot recognises even when the FAQ has no small-talk entries. Order matters:
# "ok thanks" is thanks, "hi, are you a bot?" is a question about the bot.
_SMALL_TALK: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (key, re.compile(p, _FLAGS)) for key, p in (
        ("are_you_bot", r"\b(?:are\s+you\s+(?:a\s+)?(?:bot|robot|human|real|person|ai)|"
                        r"sei\s+(?:un\s+)?(?:bot|robot|umano|una\s+persona)|"
                        r"is\s+this\s+a\s+bot)\b|เป็นบอท|เป็นคนจริง|บอทหรือ"),
        ("still_here", r"\b(?:are\s+you\s+(?:still\s+)?there|(?:still|anyone|anybody)\s+"
                       r"(?:there|here)|anybody\s+there|"
                       r"hello\s*\?{1,}|c'?[eè]\s+qualcuno|ci\s+sei)\b|มีใครอยู่ไหม|อยู่ไหม"),
        ("thanks", r"\b(?:thanks?|thank\s+you|thx|ty|cheers|grazie|grazie\s+mille|ti\s+ringrazio)"
                   r"\b|ขอบคุณ|ขอบใจ|แต๊งกิ้ว"),
        ("goodbye", r"\b(?:bye|goodbye|see\s+you|ciao\s+ciao|arrivederci|a\s+presto|buona\s+"
                    r"(?:giornata|serata))\b|ลาก่อน|บาย"),
        ("greeting", r"\b(?:hi|hello|hey|hiya|good\s+(?:morning|afternoon|evening)|ciao|salve|"
                     r"buongiorno|buonasera)\b|สวัสดี|หวัดดี"),
        ("ack", r"^(?:ok(?:ay)?|k|alright|all\s+right|got\s+it|great|perfect|cool|sure|fine|"
                r"va\s+bene|perfetto|d'?accordo|capito|ottimo|ok\s+grazie|โอเค|ได้ค่ะ|ได้ครับ|"
                r"เข้าใจแล้ว|ค่ะ|ครับ|จ้า)$"),
    ))

# Words that ask for help without saying about what: worth one clarifying question.
_VAGUE = re.compile(r"^(?:help|help\s+me|hello\s+help|i\s+have\s+a\s+(?:question|problem)|"
                    r"question|problem|info|information|aiuto|aiutatemi|ho\s+un\s+problema|"
                    r"ho\s+una\s+domanda|domanda|informazioni|ช่วยด้วย|ช่วยหน่อย|สอบถาม|"
                    r"มีคำถาม|มีปัญหา)$", _FLAGS)
# A thumbs-up or a smile says "ok"; any other lone emoji is worth a clarifying question.
_ACK_EMOJI = frozenset("👍👌🙏❤♥😊🙂😀😁😃👏✅💯🤝")
_SKIN_AND_JOINERS = frozenset("\U0001F3FB\U0001F3FC\U0001F3FD\U0001F3FE\U0001F3FF\u200d\ufe0f")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F\u200d]+")
_THAI_PARTICLES = re.compile(r"(?:ครับ|คับ|ค่ะ|คะ|ค่า|จ้า|จ้ะ|นะ|น้า)+$")
_ANY_BREAK = re.compile(r"[?!？！。.;\n]")
_QUESTION_BREAK = re.compile(r"(?<=[?!？！。])\s*|\n+|(?<=[.;])\s+")
_GREETING_LEAD = re.compile(
    r"^\s*(?:(?:hi|hello|hey|hiya|good\s+(?:morning|afternoon|evening)|ciao|salve|buongiorno|"
    r"buonasera|thanks|thank\s+you|ok|okay|grazie|perfetto|ok\s+grazie|ok\s+thanks|"
    r"สวัสดี|หวัดดี|ขอบคุณ)(?:ครับ|ค่ะ|คะ|\s+there)?\s*[,!.:;-]*\s+)+", _FLAGS)


def _plain(text: str) -> str:
    """Lower case, no surrounding punctuation, repeated letters and Thai particles trimmed."""
    text = unicodedata.normalize("NFC", text).strip().lower()
    if not text.isascii():
        text = _EMOJI.sub("", text)
    text = re.sub(r"(.)\1{2,}", r"\1", text)  # "thanksss", "ค่ะะะ"
    text = text.strip(" \t.!?,;:~-_*()[]\"'…？！。")
    return text


def is_complaint(text: str) -> bool:
    return any(p.search(text) for p in _COMPLAINT)


def says_not_helped(text: str) -> bool:
    return any(p.search(text) for p in _NOT_HELPED)


def small_talk_kind(text: str) -> str | None:
    """The kind of small talk a whole message is ("greeting", "thanks", "ack"...), or None
    when it says more than small talk does."""
    if len(text) > 80:  # small talk is short; most questions stop here
        return None
    if _only_symbols(text):
        return "ack" if set(text) - _SKIN_AND_JOINERS and \
            set(text) - _SKIN_AND_JOINERS <= _ACK_EMOJI | set(" !.") else None
    plain = _plain(text)
    words = plain.split()
    if len(words) > 6:
        return None
    bare = _THAI_PARTICLES.sub("", plain).strip() or plain  # "โอเคค่ะ" -> "โอเค"
    for key, pattern in _SMALL_TALK:
        match = pattern.search(plain) or pattern.search(bare)
        if match is None:
            continue
        source = match.string
        rest = (source[:match.start()] + source[match.end():]).strip(" ,.!?")
        rest = _THAI_PARTICLES.sub("", rest).strip()
        if key in ("are_you_bot", "still_here") or (len(rest.split()) <= 2 and len(rest) <= 16):
            return key
    return None


_FOLLOW_UP = re.compile(
    r"^\s*(?:and|also|what\s+about|how\s+about|and\s+what\s+about|same\s+for|"
    r"e|ed|e\s+per|e\s+se|e\s+invece|invece|anche|e\s+quanto|"
    r"แล้ว|ถ้า|และ)(?:\s|$)|^\s*(?:แล้ว|ถ้า)", _FLAGS)


def is_follow_up(text: str) -> bool:
    """Starts like a continuation of the last question ("and to Germany?", "e per l'Italia?",
    "แล้วส่งไปญี่ปุ่นล่ะ")."""
    return bool(_FOLLOW_UP.match(text))


def is_vague(text: str) -> bool:
    """Too short to match anything ("?", "help", an emoji that is not a thumbs-up)."""
    plain = _THAI_PARTICLES.sub("", _plain(text)).strip()
    return not plain or bool(_VAGUE.match(plain)) or (len(plain) <= 3 and " " not in plain)


def split_questions(text: str) -> list[str]:
    """The separate sentences of a message, a leading greeting taken off ("Hi! How much is
    shipping? And how long does it take?" -> two questions)."""
    lead = _GREETING_LEAD.match(text)
    if lead is None and not _ANY_BREAK.search(text.rstrip(" ?!.？！。")):
        return [text]  # one sentence, no greeting: the common case
    body = text[lead.end():] if lead else text
    parts = [p.strip() for p in _QUESTION_BREAK.split(body)]
    parts = [p for p in parts if p and small_talk_kind(p) is None and len(_plain(p)) >= 3]
    return parts or ([body.strip()] if body.strip() else [])


def _only_symbols(text: str) -> bool:
    return all(not ch.isalnum() for ch in text)


# Asking for a person, in any of our languages. FAQ entries marked `escalate` catch most of
# these; this list is the safety net that works even with an FAQ that lacks such an entry.
_HUMAN_PATTERNS = {
    "en": r"\b(?:talk|speak|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s*one\s*|somebody\s*)?"
          r"(?:real\s+)?(?:human|person|agent|operator|representative|someone|somebody)\b"
          r"|\b(?:human|real person|live agent)\s+please\b|\bcustomer service agent\b",
    "it": r"\b(?:parlare|chattare)\s+con\s+(?:un|una|un')?\s*(?:operatore|operatrice|persona|"
          r"umano|addetto|qualcuno)\b|\boperatore\s+(?:umano|per favore)\b",
    "th": r"ขอคุยกับ(?:พนักงาน|เจ้าหน้าที่|คน|แอดมิน)|ติดต่อ(?:พนักงาน|เจ้าหน้าที่)|ขอสายพนักงาน",
}
_HUMAN = {lang: re.compile(p, re.IGNORECASE) for lang, p in _HUMAN_PATTERNS.items()}


def asks_for_human(text: str) -> bool:
    return any(p.search(text) for p in _HUMAN.values())

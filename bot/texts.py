"""What the bot says in its own words, in every language it speaks."""

from __future__ import annotations

import re

TEXTS: dict[str, dict[str, str]] = {
    "escalated": {
        "en": "Thanks, I've passed your message to our team. A person will reply here as soon "
              "as possible.",
        "it": "Grazie, ho passato il tuo messaggio al nostro team. Una persona ti risponderà qui "
              "il prima possibile.",
        "th": "ขอบคุณค่ะ เราได้ส่งข้อความของคุณให้ทีมงานแล้ว เจ้าหน้าที่จะตอบกลับที่นี่โดยเร็วที่สุด",
    },
    "escalated_human": {
        "en": "Of course, I'm connecting you with a person from our team. They will reply here "
              "shortly.",
        "it": "Certo, ti metto in contatto con una persona del nostro team. Ti risponderà qui a "
              "breve.",
        "th": "ได้เลยค่ะ กำลังส่งต่อให้เจ้าหน้าที่ของเรา เจ้าหน้าที่จะตอบกลับที่นี่ในไม่ช้า",
    },
    "attachment_only": {
        "en": "Thanks, we received your file. A person from our team will look at it and reply.",
        "it": "Grazie, abbiamo ricevuto il tuo file. Una persona del nostro team lo guarderà e "
              "ti risponderà.",
        "th": "ขอบคุณค่ะ เราได้รับไฟล์ของคุณแล้ว เจ้าหน้าที่จะตรวจสอบและตอบกลับ",
    },
    "still_waiting": {
        "en": "Your message has been added to your request; a person will reply here.",
        "it": "Il tuo messaggio è stato aggiunto alla richiesta; una persona ti risponderà qui.",
        "th": "เราได้เพิ่มข้อความของคุณในคำขอแล้ว เจ้าหน้าที่จะตอบกลับที่นี่",
    },
}

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


def text_for(key: str, lang: str, default_lang: str = "en") -> str:
    variants = TEXTS[key]
    return variants.get(lang) or variants.get(default_lang) or variants["en"]


def asks_for_human(text: str) -> bool:
    return any(p.search(text) for p in _HUMAN.values())

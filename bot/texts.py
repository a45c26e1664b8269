"""What the bot says in its own words, in every language it speaks.

FAQ entries (including `kind: small_talk` ones) are the admins' words; these are the bot's
own, used when the FAQ has nothing fitting to say.
"""

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
    "contact_saved": {
        "en": "Thanks, I've saved your number: when you write to us from it on another channel, "
              "we'll know it's you.",
        "it": "Grazie, ho salvato il tuo numero: se ci scrivi da questo numero su un altro "
              "canale, sapremo che sei tu.",
        "th": "ขอบคุณค่ะ บันทึกเบอร์ของคุณแล้ว หากติดต่อเราจากเบอร์นี้ในช่องทางอื่น เราจะรู้ว่าเป็นคุณค่ะ",
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
    "escalated_no_desk": {
        "en": "Sorry, I don't have an answer to that. I've noted your question for our team, "
              "who read every one of them.",
        "it": "Mi dispiace, non ho una risposta a questa domanda. L'ho annotata per il nostro "
              "team, che le legge tutte.",
        "th": "ขออภัยค่ะ ยังไม่มีคำตอบสำหรับคำถามนี้ เราได้บันทึกคำถามของคุณไว้ให้ทีมงานแล้ว",
    },
    "escalated_human_no_desk": {
        "en": "I've noted that you'd like to talk to a person and passed it on to our team.",
        "it": "Ho annotato che vuoi parlare con una persona e l'ho comunicato al nostro team.",
        "th": "รับทราบค่ะว่าต้องการคุยกับเจ้าหน้าที่ เราได้แจ้งทีมงานแล้ว",
    },
    "complaint": {
        "en": "I'm really sorry about this. I've passed your message to our team as a priority; "
              "a person will look into it and reply here.",
        "it": "Mi dispiace davvero. Ho passato il tuo messaggio al nostro team con priorità; una "
              "persona se ne occuperà e ti risponderà qui.",
        "th": "ขออภัยเป็นอย่างยิ่งค่ะ เราได้ส่งเรื่องของคุณให้ทีมงานเป็นเรื่องด่วนแล้ว "
              "เจ้าหน้าที่จะตรวจสอบและตอบกลับที่นี่",
    },
    "complaint_no_desk": {
        "en": "I'm really sorry about this. I've recorded your message for our team as a "
              "priority.",
        "it": "Mi dispiace davvero. Ho registrato il tuo messaggio per il nostro team con "
              "priorità.",
        "th": "ขออภัยเป็นอย่างยิ่งค่ะ เราได้บันทึกเรื่องของคุณให้ทีมงานเป็นเรื่องด่วนแล้ว",
    },
    "in_queue": {
        "en": "You're still in the queue: a person from our team will reply here as soon as "
              "they can. Meanwhile I can still answer questions about orders, shipping, returns "
              "and payments.",
        "it": "Sei ancora in coda: una persona del nostro team ti risponderà qui appena "
              "possibile. Nel frattempo posso rispondere a domande su ordini, spedizioni, resi e "
              "pagamenti.",
        "th": "คุณยังอยู่ในคิวค่ะ เจ้าหน้าที่จะตอบกลับที่นี่โดยเร็วที่สุด "
              "ระหว่างนี้สามารถถามเรื่องคำสั่งซื้อ การจัดส่ง การคืนสินค้า และการชำระเงินได้ค่ะ",
    },
    "in_queue_opens": {
        "en": "You're still in the queue. Our team is back {when} ({tz}) and will reply here "
              "then.",
        "it": "Sei ancora in coda. Il nostro team torna {when} ({tz}) e ti risponderà qui.",
        "th": "คุณยังอยู่ในคิวค่ะ ทีมงานจะกลับมา{when} ({tz}) และจะตอบกลับที่นี่",
    },
    "clarify": {
        "en": "Could you tell me a little more about what you need? For example: \"where is my "
              "order?\" or \"how do I return an item?\"",
        "it": "Puoi dirmi qualcosa in più su cosa ti serve? Per esempio: \"dov'è il mio "
              "ordine?\" o \"come faccio un reso?\"",
        "th": "ช่วยเล่าเพิ่มเติมหน่อยได้ไหมคะว่าต้องการความช่วยเหลือเรื่องอะไร เช่น "
              "\"พัสดุของฉันอยู่ที่ไหน\" หรือ \"คืนสินค้ายังไง\"",
    },
    "opted_out": {
        "en": "Done: you won't get any more messages from us unless you write to us first. "
              "Order updates you asked for still reach you.",
        "it": "Fatto: non riceverai più messaggi da noi, a meno che non ci scriva tu. "
              "Gli aggiornamenti sugli ordini continueranno ad arrivarti.",
        "th": "เรียบร้อยค่ะ คุณจะไม่ได้รับข้อความจากเราอีก เว้นแต่คุณจะติดต่อเรามาก่อน "
              "แต่ยังคงได้รับการแจ้งสถานะคำสั่งซื้อตามปกติ",
    },
    "greeting": {
        "en": "Hi! How can I help you today?",
        "it": "Ciao! Come posso aiutarti?",
        "th": "สวัสดีค่ะ มีอะไรให้ช่วยไหมคะ",
    },
    "thanks": {
        "en": "You're welcome! Anything else I can help with?",
        "it": "Prego! Posso aiutarti con qualcos'altro?",
        "th": "ยินดีค่ะ มีอะไรให้ช่วยอีกไหมคะ",
    },
    "survey_thanks": {
        "en": "Thank you for your rating! It helps us get better.",
        "it": "Grazie per la tua valutazione! Ci aiuta a migliorare.",
        "th": "ขอบคุณสำหรับคะแนนค่ะ ช่วยให้เราพัฒนาได้ดียิ่งขึ้น",
    },
    "goodbye": {
        "en": "Goodbye, and thanks for writing to us!",
        "it": "A presto, e grazie per averci scritto!",
        "th": "ขอบคุณที่ติดต่อมาค่ะ แล้วพบกันใหม่",
    },
    "are_you_bot": {
        "en": "I'm the store's automatic assistant. I answer common questions right away, and "
              "if you'd like a person, just say so.",
        "it": "Sono l'assistente automatico del negozio. Rispondo subito alle domande più comuni "
              "e, se preferisci una persona, basta chiederlo.",
        "th": "ฉันเป็นผู้ช่วยอัตโนมัติของร้านค่ะ ตอบคำถามทั่วไปได้ทันที "
              "ถ้าต้องการคุยกับเจ้าหน้าที่ บอกได้เลยค่ะ",
    },
    "still_here": {
        "en": "Yes, I'm here! What can I do for you?",
        "it": "Sì, ci sono! Cosa posso fare per te?",
        "th": "อยู่ค่ะ มีอะไรให้ช่วยคะ",
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

"""A small English / Italian / Thai table of store words, so an entry written in one language is
found by a question in another.

A store often writes an entry's phrasings in one language only. With no shared word, a lexical
matcher cannot link "dov'è il mio pacco?" to "where is my parcel?"; with this table "pacco",
"parcel", "package" and "พัสดุ" are one feature (a *concept*), in the phrasings and in the
question alike, so the words a question shares with an entry count whatever language each was
written in. It covers what online-store customers ask about (orders, shipping, returns,
payments, accounts), not general language: words outside it still only match themselves.

A word may stand for two concepts ("cancellare": cancel an order, delete an account). Latin
words go through the matcher's normaliser and stemmer; Thai words are added to the word
segmenter's dictionary so they come out whole.
"""

from __future__ import annotations

# concept -> words in English, Italian and Thai (single words; the stemmer joins inflections)
CONCEPTS: dict[str, str] = {
    "order": "order orders ordine ordini ordinato ออเดอร์ สั่งซื้อ คำสั่งซื้อ",
    "parcel": "parcel package packet pacco pacchetto plico พัสดุ กล่อง",
    "item": "item items product products articolo articoli prodotto prodotti สินค้า",
    "ship": "ship shipping shipped shipment deliver delivery delivered spedizione spedire"
            " spedito spedite spedisci consegna consegnare consegnato consegnate ส่ง จัดส่ง",
    "cost": "cost costs price prices fee fees charge charges costo costa costi prezzo prezzi"
            " spese ค่า ราคา",
    "free": "free gratis gratuita gratuito gratuite gratuiti ฟรี",
    "track": "track tracking tracciare tracciamento traccia ติดตาม แทร็ก",
    "arrive": "arrive arrived arrives arrivare arrivato arrivata arriva arrivo ถึง มาถึง",
    "receive": "receive received ricevere ricevuto ricevuta ได้รับ",
    "cancel": "cancel annullare annulla annullato disdire cancellare ยกเลิก",
    "delete": "delete remove eliminare elimina cancellare ลบ",
    "change": "change modify edit cambiare modificare modifica เปลี่ยน แก้ไข",
    "exchange": "exchange swap sostituire sostituzione scambio แลก",
    "return": "return returns reso resi restituire restituzione rendere ส่งคืน คืนสินค้า",
    "refund": "refund refunds refunded rimborso rimborsi rimborsare คืนเงิน เงินคืน ได้เงินคืน",
    "money": "money soldi denaro เงิน เงินคืน ได้เงินคืน",
    "broken": "broken damaged defective faulty rotto rotta danneggiato danneggiata difettoso"
              " แตก พัง ชำรุด เสียหาย",
    "pay": "pay paid payment payments pagare pagato pagamento pagamenti จ่าย ชำระ ชำระเงิน",
    "card": "card carta บัตร บัตรเครดิต",
    "declined": "declined rejected failed rifiutato rifiutata rifiuta fallito ไม่ผ่าน",
    "discount": "discount coupon promo voucher sconto sconti coupon ส่วนลด โค้ดส่วนลด",
    "code": "code codice โค้ด",
    "password": "password pasword passwd รหัสผ่าน",
    "login": "login log accedere accesso ล็อกอิน เข้าสู่ระบบ",
    "account": "account profile profilo บัญชี",
    "human": "human person agent operator staff someone operatore persona umano พนักงาน"
             " แอดมิน เจ้าหน้าที่",
    "talk": "talk speak chat parlare คุย พูด",
    "complaint": "complaint complain reclamo lamentela ร้องเรียน",
    "size": "size sizes taglia taglie misura misure ไซส์ ขนาด",
    "stock": "stock restock available disponibile disponibili esaurito สต็อก หมด",
    "invoice": "invoice receipt fattura ricevuta ใบกำกับภาษี ใบเสร็จ",
    "gift": "gift regalo ของขวัญ",
    # not "punto": "a che punto è il mio ordine?" asks for the status
    "points": "points point punti คะแนน แต้ม",
    "loyalty": "loyalty rewards fedelta สมาชิก",
    "friend": "friend friends amico amici amica เพื่อน",
    "review": "review reviews recensione recensioni รีวิว",
    "newsletter": "newsletter newsletters unsubscribe disiscrivere iscrizione จดหมายข่าว",
    "privacy": "privacy dati ข้อมูลส่วนตัว ความเป็นส่วนตัว",
    "open": "open hours opening aperti aperto orari orario เปิด",
    "abroad": "abroad international overseas internationally estero ต่างประเทศ",
    "country": "country countries paese paesi ประเทศ",
    "day": "day days giorno giorni วัน",
    # "how long does it take": "quanto tempo ci vuole", "quanto ci mette", "นานไหม"
    "duration": "long tempo mette mettete impiega impiegate นาน",
    "express": "express fast faster urgent veloce rapida ด่วน",
    "thailand": "thailand thailandia ไทย",
    "wash": "wash washing care lavare lavaggio ซัก ซักผ้า",
    "sell": "sell vendete vendere vendita ขาย",
    "address": "address indirizzo ที่อยู่",
    "late": "late delayed ritardo ritardato ช้า",
    "wrong": "wrong sbagliato sbagliata ผิด",
}

#: Words whose stem is a table word's stem in another language, kept out of its concept:
#: English "sold" ("sold out") has the stem of Italian "soldi" (money).
NOT_CONCEPTS = frozenset({"sold"})

#: Thai words of the table, for the segmenter's dictionary.
THAI_WORDS = frozenset(
    word for words in CONCEPTS.values() for word in words.split()
    if "\u0e00" <= word[0] <= "\u0e7f"
)

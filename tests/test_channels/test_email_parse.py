"""Pure parsing rules of the email channel: reply extraction on public fixture corpora
(zapier/email-reply-parser, mailgun/talon), decoding, automatic-mail detection, threading."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from channels.email_parse import (
    html_to_text,
    is_own_id,
    parse_mail,
    reply_references,
    reply_subject,
    strip_reply,
    thread_root,
)
from tests.conftest import SHARED_DATA

EMAIL_DATA = SHARED_DATA / "email"
ZAPIER = EMAIL_DATA / "zapier"
TALON = EMAIL_DATA / "talon"
needs_data = pytest.mark.skipif(not EMAIL_DATA.is_dir(),
                                reason=f"fixture corpus {EMAIL_DATA} is not present")

# What a support agent should see: the new text only (exact, after whitespace folding).
ZAPIER_EXPECTED = {
    "correct_sig.txt": "this is an email with a correct -- signature.",
    "email_1_1.txt": "Hi folks What is the best way to clear a Riak bucket of all key, values "
                     "after running a test? I am currently using the Java HTTP API.",
    "email_1_3.txt": "Oh thanks. Having the function would be great.",
    "email_1_4.txt": "Awesome! I haven't had another problem with it.",
    "email_1_7.txt": ":+1:",
    "email_1_8.txt": "I will reply under this one and under this.",
    "email_2_1.txt": "Outlook with a reply",
    "email_2_2.txt": "Outlook with a reply directly above line",
    "email_2_3.txt": "Outlook with a reply above headers using unusual format",
    "email_BlackBerry.txt": "Here is another email",
    "email_bullets.txt": "test 2 this should list second and have spaces and retain this "
                         "formatting - how about bullets - and another",
    "email_gmail.txt": "This is a test for inbox replying to a github message.",
    "email_headers_no_delimiter.txt": "And another reply!",
    "email_iPhone.txt": "Here is another email",
    "email_multi_word_sent_from_my_mobile_device.txt": "Here is another email",
    "email_one_is_not_on.txt": "Thank, this is really helpful. One outstanding question I had: "
                               "Locally (on development), when I run...",
    "email_sent_from_my_not_signature.txt": "Here is another email Sent from my desk, is much "
                                            "easier then my mobile phone.",
    "email_sig_delimiter_in_middle_of_line.txt": "Hi there! Stuff happened. And here is a fix "
                                                 "-- this is not a signature. kthxbai",
    "pathological.txt": "I think you're onto something. I will try to fix the problem as soon "
                        "as I get back to a computer.",
}
# Longer ones: (start, end) of the expected reply; nothing quoted may survive.
ZAPIER_BOUNDS = {
    "email_1_2.txt": ("Hi, You can list the keys", "delete them all individually.\""),
    "email_1_5.txt": ("One: Here's what I've got.", "It goes on and on for a while."),
    "email_partial_quote_header.txt": ("On your remote host", "the tunnel is not working."),
    "greedy_on.txt": ("On your remote host", "the tunnel is not working."),
}
TALON_HTML_REPLY = "Hi. I am fine."  # talon keeps "Thanks, Alex"; we drop closings


def fold(text: str) -> str:
    return " ".join(text.split())


@needs_data
@pytest.mark.parametrize("name", sorted(ZAPIER_EXPECTED))
def test_zapier_fixture_reply(name: str) -> None:
    text = (ZAPIER / name).read_text(encoding="utf-8")
    assert fold(strip_reply(text)) == ZAPIER_EXPECTED[name]


@needs_data
@pytest.mark.parametrize("name", sorted(ZAPIER_BOUNDS))
def test_zapier_fixture_long_reply(name: str) -> None:
    out = fold(strip_reply((ZAPIER / name).read_text(encoding="utf-8")))
    start, end = ZAPIER_BOUNDS[name]
    assert out.startswith(start) and out.endswith(end)
    assert ">" not in out and "wrote:" not in out and "mailing list" not in out


@needs_data
@pytest.mark.parametrize("name", sorted(p.name for p in (TALON / "standard_replies").glob("*.eml"))
                         if (TALON / "standard_replies").is_dir() else [])
def test_talon_standard_replies(name: str) -> None:
    """Gmail, Outlook, Yahoo, AOL, iPhone, Android (Russian), Thunderbird...: all say Hello."""
    parsed = parse_mail((TALON / "standard_replies" / name).read_bytes())
    assert parsed.text == "Hello"
    assert parsed.automatic is None


@needs_data
@pytest.mark.parametrize("name", sorted(p.name for p in (TALON / "html_replies").glob("*.html"))
                         if (TALON / "html_replies").is_dir() else [])
def test_talon_html_replies(name: str) -> None:
    html = (TALON / "html_replies" / name).read_text(encoding="utf-8", errors="replace")
    assert fold(strip_reply(html_to_text(html))) == TALON_HTML_REPLY


@needs_data
def test_talon_other_layouts() -> None:
    hr = (TALON / "reply-separated-by-hr.html").read_text(encoding="utf-8")
    assert fold(strip_reply(html_to_text(hr))) == "Hi there Bob"
    olk = (TALON / "OLK_SRC_BODY_SECTION.html").read_text(encoding="utf-8")
    assert fold(strip_reply(html_to_text(olk))) == "Reply"
    share = parse_mail((TALON / "reply-quotations-share-block.eml").read_bytes()).text
    assert share.startswith("Hi Katharine.") and share.endswith("Joe XXX")
    assert "wrote" not in share and "New Booking Inquiry" not in share


@needs_data
@pytest.mark.parametrize("name", ["camel_case", "short_url", "sparse"])
def test_talon_signatures_with_a_marker(name: str) -> None:
    """Signatures we can see (a delimiter, a closing line); the ones talon finds with its
    classifier (a bare name and title) are not stripped, see the README."""
    folder = TALON / "signature" / "emails" / "stripped"
    body = (folder / f"{name}_body").read_text(encoding="utf-8")
    signature = (folder / f"{name}_signature").read_text(encoding="utf-8").strip()
    expected = body.strip()[:len(body.strip()) - len(signature)] if signature else body
    if name == "short_url":  # "Thank you,\nNoam" is a closing we drop too
        expected = expected.replace("Thank you,\nNoam", "")
    assert fold(strip_reply(body)) == fold(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("Dov'è il mio ordine?\n\nIl giorno lun 23 nov 2026 alle ore 10:00 Demo Shop "
     "<support@shop.test> ha scritto:\n> Grazie per averci scritto.", "Dov'è il mio ordine?"),
    ("Where is my parcel?\n\n-----Original Message-----\nFrom: Shop\nSent: Monday\n\nHi",
     "Where is my parcel?"),
    ("Where is my parcel?\n\n________________________________\nDa: Shop <s@shop.test>\n"
     "Inviato: lunedì 23 novembre 2026 10:00\nA: Ann\nOggetto: Ordine\n\nCiao",
     "Where is my parcel?"),
    ("ส่งของกี่วันครับ\n\nส่งจาก iPhone ของฉัน", "ส่งของกี่วันครับ"),
    ("Can I pay by card?\n\nInviato da iPhone", "Can I pay by card?"),
    ("Can I pay by card?\n--\nAnn Smith\nACME Ltd", "Can I pay by card?"),
    ("> old quoted line\nNew question: do you ship to Thailand?", "New question: do you ship "
     "to Thailand?"),
])
def test_strip_reply_rules(text: str, expected: str) -> None:
    assert strip_reply(text) == expected


def test_charsets_and_encoded_headers() -> None:
    raw = (b"From: =?utf-8?q?Zo=C3=AB_Rossi?= <ZOE@Example.com>\r\n"
           b"Subject: =?iso-8859-1?q?R=E9servation_n=B042?=\r\n"
           b"Message-ID: <enc1@example.com>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"Bonjour, o=F9 est ma commande? Pi=F9 di 30=80.\r\n")
    mail = parse_mail(raw)
    assert mail.display_name == "Zoë Rossi"
    assert mail.sender == "zoe@example.com"
    assert mail.subject == "Réservation n°42"
    assert mail.text == "Bonjour, où est ma commande? Più di 30€." or \
        mail.text == "Bonjour, où est ma commande? Più di 30\x80."


def test_utf8_base64_thai_body() -> None:
    msg = EmailMessage()
    msg["From"] = "สมชาย <somchai@example.co.th>"
    msg["Subject"] = "สอบถามค่าส่ง"
    msg["Message-ID"] = "<th1@example.co.th>"
    msg.set_content("ค่าส่งเท่าไหร่ครับ", cte="base64")
    mail = parse_mail(msg.as_bytes())
    assert (mail.display_name, mail.subject, mail.text) == ("สมชาย", "สอบถามค่าส่ง",
                                                            "ค่าส่งเท่าไหร่ครับ")


def test_html_only_mail_is_converted_and_quote_dropped() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.com"
    msg["Message-ID"] = "<h1@example.com>"
    msg.set_content(
        "<html><body><p>How much does <b>shipping</b> cost?</p>"
        "<div class=\"gmail_quote\">On Mon, Shop wrote:<blockquote>Old text</blockquote></div>"
        "</body></html>", subtype="html")
    mail = parse_mail(msg.as_bytes())
    assert mail.text == "How much does shipping cost?"


def test_prefers_plain_part_and_lists_attachments() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.com"
    msg.set_content("plain text")
    msg.add_alternative("<p>html text</p>", subtype="html")
    msg.add_attachment(b"\x89PNG....", maintype="image", subtype="png", filename="box.png")
    mail = parse_mail(msg.as_bytes())
    assert mail.text == "plain text"
    assert [(a.kind, a.name, a.mime_type, a.size) for a in mail.attachments] == [
        ("image", "box.png", "image/png", 8)]


@pytest.mark.parametrize(("headers", "reason"), [
    ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted"),
    ({"Auto-Submitted": "auto-generated"}, "Auto-Submitted"),
    ({"Precedence": "bulk"}, "Precedence"),
    ({"Precedence": "junk"}, "Precedence"),
    ({"Precedence": "list"}, "Precedence"),
    ({"Precedence": "auto_reply"}, "Precedence"),
    ({"List-Id": "<news.example.com>"}, "List-Id"),
    ({"List-Unsubscribe": "<mailto:u@example.com>"}, "List-Unsubscribe"),
    ({"X-Autoreply": "yes"}, "X-Autoreply"),
    ({"X-Autorespond": "yes"}, "X-Autorespond"),
    ({"X-Auto-Response-Suppress": "All"}, "X-Auto-Response-Suppress"),
    ({"Return-Path": "<>"}, "Return-Path"),
    ({"From": "MAILER-DAEMON@mx.example.com"}, "mailer-daemon"),
    ({"From": "postmaster@example.com"}, "postmaster"),
    ({"From": "Shop <support@shop.test>"}, "our own address"),
    ({"Message-ID": "<1.2.3.storedesk.42@shop.test>"}, "our own Message-ID"),
])
def test_automatic_mail_is_recognised(headers: dict[str, str], reason: str) -> None:
    msg = EmailMessage()
    msg["From"] = headers.pop("From", "ann@example.com")
    msg["Message-ID"] = headers.pop("Message-ID", "<a1@example.com>")
    for k, v in headers.items():
        msg[k] = v
    msg.set_content("How much does shipping cost?")
    mail = parse_mail(msg.as_bytes(), own_addresses=frozenset({"support@shop.test"}),
                      own_domain="shop.test")
    assert mail.automatic is not None and reason.lower() in mail.automatic.lower()


def test_person_with_auto_submitted_no_is_answered() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.com"
    msg["Auto-Submitted"] = "no"
    msg["Return-Path"] = "<ann@example.com>"
    msg.set_content("hi")
    assert parse_mail(msg.as_bytes()).automatic is None


def test_dsn_report_is_recognised() -> None:
    from tests.test_channels.test_email import DSN
    assert "multipart/report" in (parse_mail(DSN).automatic or "")


def test_threading_helpers() -> None:
    assert thread_root("<c>", "<b>", ("<a>", "<b>")) == "<a>"
    assert thread_root("<c>", "<b>", ()) == "<b>"
    assert thread_root("<c>", None, ()) == "<c>"
    assert reply_references("<c>", ("<a>", "<b>"), "<b>") == ["<a>", "<b>", "<c>"]
    assert reply_references("<c>", (), "<b>") == ["<b>", "<c>"]
    long = tuple(f"<{i}>" for i in range(30))
    refs = reply_references("<x>", long, None)
    assert len(refs) == 12 and refs[0] == "<0>" and refs[-1] == "<x>"
    assert reply_subject("Shipping?") == "Re: Shipping?"
    assert reply_subject("RE: Re: Shipping?") == "Re: Shipping?"
    assert reply_subject("R: Spedizione") == "Re: Spedizione"
    assert reply_subject("") == "Re: your message"
    assert is_own_id("<20261122.1.2.storedesk.7@shop.test>", "shop.test")
    assert not is_own_id("<storedesk@example.com>", "shop.test")


def test_dedup_key_without_message_id_is_stable() -> None:
    raw = (b"From: ann@example.com\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n"
           b"Subject: Hello\r\n\r\nbody\r\n")
    a, b = parse_mail(raw), parse_mail(raw + b"more\r\n")
    assert a.message_id is None and a.dedup_key.startswith("sha256:")
    assert a.dedup_key == b.dedup_key and a.thread == a.dedup_key
    other = parse_mail(raw.replace(b"Hello", b"Hello again"))
    assert other.dedup_key != a.dedup_key


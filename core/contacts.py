"""Contact details as the customer gave them, in one form: what links one customer across
channels (an email typed in any case, a phone number with or without spaces or a "whatsapp:"
prefix)."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


def normalise_email(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    return value if _EMAIL.match(value) else None


def normalise_phone(value: str | None) -> str | None:
    """E.164-ish: '+' and digits only. 'whatsapp:+39 333-123' -> '+39333123'."""
    if not value:
        return None
    value = value.strip().removeprefix("whatsapp:")
    digits = re.sub(r"\D", "", value)
    if len(digits) < 6 or len(digits) > 15:
        return None
    return "+" + digits

"""Real local mail servers for the email channel: Dovecot (IMAP) and an aiosmtpd sink (SMTP).

Dovecot runs once per test process from a throw-away config (protocol doc §4.6); each test
gets its own mailbox user, so tests never see each other's mail. The SMTP sink records what
the service sent and can answer the next sends with a temporary (421) or permanent (550) error.
Mail goes in the way a real one does: IMAP APPEND into the user's INBOX.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import email
import email.policy
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, ClassVar

import aioimaplib
import pytest
from aiosmtpd.controller import Controller

PASSWORD = "secret-pw"
BOT_ADDRESS = "support@shop.test"

DOVECOT_CONF = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 8
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _die_with_parent() -> None:
    """Linux: SIGTERM the server if the test process is killed before it can stop it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Dovecot:
    """One foreground Dovecot on a free port, in a temp dir; users are added on the fly."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="storedesk-dovecot-"))
        self.port = free_port()
        self.conf = self.root / "dovecot.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._users = itertools.count(1)
        self._lock = threading.Lock()

    @staticmethod
    def available() -> str | None:
        """None if Dovecot can run here, else the reason it cannot."""
        if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
            return "dovecot is not installed (apt-get install -y dovecot-imapd)"
        if os.geteuid() != 0:
            return "the Dovecot test server needs root (it switches to the 'mail' user)"
        return None

    def start(self) -> None:
        self.root.chmod(0o755)  # the auth process runs as 'dovecot' and reads users
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root / "mail", "mail", "mail")
        (self.root / "users").touch()
        self.conf.write_text(DOVECOT_CONF.format(root=self.root, port=self.port))
        self.proc = subprocess.Popen(["dovecot", "-c", str(self.conf), "-F"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        try:
            _wait_port(self.port)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def new_user(self) -> str:
        with self._lock:
            user = f"bot{next(self._users)}-{os.getpid()}@shop.test"
            with (self.root / "users").open("a") as f:
                f.write(f"{user}:{{PLAIN}}{PASSWORD}\n")
        return user

    def doveadm(self, *args: str) -> str:
        out = subprocess.run(["doveadm", "-c", str(self.conf), *args], check=True,
                             capture_output=True, timeout=30)
        return out.stdout.decode()

    def set_uidvalidity(self, user: str, value: int, mailbox: str = "INBOX") -> None:
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), mailbox)


_DOVECOT: Dovecot | None = None


def dovecot_server() -> Dovecot:
    """The process-wide Dovecot, started on first use (skips the test when unavailable)."""
    global _DOVECOT
    reason = Dovecot.available()
    if reason:
        pytest.skip(reason)
    if _DOVECOT is None:
        server = Dovecot()
        server.start()
        _DOVECOT = server
        atexit.register(stop_dovecot)
    return _DOVECOT


def stop_dovecot() -> None:
    global _DOVECOT
    if _DOVECOT is not None:
        _DOVECOT.stop()
        _DOVECOT = None


async def imap_append(port: int, user: str, raw: bytes, mailbox: str = "INBOX",
                      date: Any = None) -> None:
    """Deliver a mail the way an MTA's local delivery would look to us: it appears in INBOX.
    `date` (aware datetime) sets the IMAP internal date, e.g. to fake old history."""
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
    await client.wait_hello_from_server()
    resp = await client.login(user, PASSWORD)
    assert resp.result == "OK", resp.lines
    resp = await client.append(raw, mailbox=mailbox, date=date)
    assert resp.result == "OK", resp.lines
    await client.logout()


def make_mail(*, sender: str = "Ann Customer <ann@example.com>", to: str = BOT_ADDRESS,
              subject: str = "Question", body: str = "How much does shipping cost?",
              message_id: str | None = None, headers: dict[str, str] | None = None,
              html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(time_now())
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    for name, value in (headers or {}).items():
        msg[name] = value
    if html is not None and not body:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def time_now() -> Any:
    from datetime import UTC, datetime
    return datetime.now(UTC)


class SmtpSink:
    """aiosmtpd handler: keeps every accepted mail; can refuse the next ones on request."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            if self.failures:
                return self.failures.pop(0)
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(parsed)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def fail_next(self, reply: str, count: int = 1) -> None:
        with self._lock:
            self.failures.extend([reply] * count)


@contextlib.contextmanager
def smtp_sink() -> Any:
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield sink, controller.port
    finally:
        controller.stop()


class EmailHarness:
    """The contract `Harness` for email: APPEND into Dovecot in, aiosmtpd sink out."""

    name = "email"
    not_applicable: ClassVar[dict[str, str]] = {
        "signature": "mail is pulled over an authenticated IMAP session; there is no "
                     "webhook signature to check",
        "size": "oversized mail is skipped by the IMAP poller (logged), not refused with a "
                "413; tests/test_channels/test_email.py covers it",
    }

    def __init__(self, server: Dovecot, sink: SmtpSink, smtp_port: int) -> None:
        self.server = server
        self.sink = sink
        self.smtp_port = smtp_port
        self.user = server.new_user()

    def settings(self) -> dict[str, Any]:
        return email_settings(self.server, self.user, self.smtp_port)

    async def deliver(self, service: Any, *, external_id: str, text: str,
                      signature: str = "good", size: int | None = None) -> int:
        body = text if size is None else text + "\n" + "x" * size
        raw = make_mail(body=body, message_id=f"<{external_id}@example.com>")
        await imap_append(self.server.port, self.user, raw)
        return 200

    def fail_next_sends(self, kind: str, count: int = 1) -> None:
        reply = {"rate_limited": "421 4.7.0 Too many messages, slow down",
                 "permanent": "550 5.1.1 Mailbox unavailable"}[kind]
        self.sink.fail_next(reply, count)

    def sent(self) -> list[str]:
        return [_text_of(m) for m in list(self.sink.messages)]


def _text_of(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return str(part.get_content()).strip() if part is not None else ""


def email_settings(server: Dovecot, user: str, smtp_port: int, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "imap_host": "127.0.0.1", "imap_port": server.port, "imap_ssl": False,
        "imap_user": user, "imap_password": PASSWORD, "imap_poll_seconds": 0.5,
        "smtp_host": "127.0.0.1", "smtp_port": smtp_port, "smtp_tls": "none",
        "email_from": f"Demo Shop <{user}>",
    }
    values.update(extra)
    return values


@contextlib.asynccontextmanager
async def email_harness() -> AsyncIterator[EmailHarness]:
    server = dovecot_server()
    with smtp_sink() as (sink, port):
        yield EmailHarness(server, sink, port)

"""WhatsApp through Twilio: signed webhooks in, the async REST client out.

POST /webhooks/twilio/whatsapp   inbound message (form) -> 200 empty TwiML once committed
POST /webhooks/twilio/status     delivery status callback for a message we sent -> 200

Both are signed with `X-Twilio-Signature` over PUBLIC_URL + path + query (not the URL this
process sees, which differs behind a TLS proxy). The dedup key is `MessageSid`. The address
is the customer's phone in E.164 (`whatsapp:` stripped) and is also passed as the customer's
phone, so a WhatsApp customer is the same customer as the one the store knows by phone.

Replies: free text inside WhatsApp's 24-hour customer-service window (measured from the last
inbound message of that number). Outside it the real text cannot be sent: the reply is *held*
(status "held", never "sent") and the approved template `TWILIO_TEMPLATE_SID`, when set, asks
the customer to reopen the conversation; the held text goes out when they write again (the
pipeline re-queues held replies of a conversation that hears from its customer).
Twilio reports what happened later by status callback: it is verified, translated and handed
to the core (`Deliveries.report`), which keeps the furthest status (callbacks arrive out of
order, and may beat the outbox's record of the send) and the failure, such as 63016.

Messages.create is not idempotent. After a timeout or a dropped connection we cannot know
whether Twilio created the message: that is "outcome unknown", which the outbox retries (a
possible duplicate rather than a lost answer), as it retries connection errors and Twilio's
429/5xx answers. Vendor errors become ours in `_translate` only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from multidict import MultiDict
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from channels.base import (
    Attachment,
    Channel,
    ChannelContext,
    Deliveries,
    DeliveryReport,
    InboundMessage,
    Intake,
    OutboundMessage,
    SendResult,
)
from channels.edge import FORWARDED, form_fields, read_body
from core.contacts import normalise_phone
from core.errors import (
    ChannelAuthError,
    ChannelError,
    ChannelOutcomeUnknown,
    ChannelPermanentError,
    ChannelRateLimited,
    ChannelTemporaryError,
    ConfigError,
    InputError,
    PayloadTooLarge,
    SignatureError,
)

log = logging.getLogger(__name__)
INBOUND_PATH = "/webhooks/twilio/whatsapp"
STATUS_PATH = "/webhooks/twilio/status"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
WINDOW = timedelta(hours=24)
MAX_BODY = 1600  # Twilio refuses longer WhatsApp bodies (21617)
TWILIO_HOSTS = ("https://api.twilio.com", "https://messaging.twilio.com",
                "https://content.twilio.com")
#: Twilio status -> our Message.status, and how far along each of ours is.
STATUS_MAP = {"accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent",
              "sent": "sent", "delivered": "delivered", "read": "read", "failed": "failed",
              "undelivered": "failed", "canceled": "failed"}
#: a reply outside the 24-hour window, waiting for the customer to write again
HELD = "held"
KNOWN_ERRORS = {"63016": "outside the 24-hour window: only an approved template can be sent",
                "63018": "WhatsApp sender rate limit", "63003": "not a WhatsApp number",
                "21211": "invalid 'To' phone number", "63024": "invalid message recipient"}
_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RETRY_AFTER: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "twilio_retry_after", default=None)


class _TwilioHttp(AsyncTwilioHttpClient):  # type: ignore[misc]
    """Twilio's async HTTP client with the API host replaced by TWILIO_API_BASE (a regional
    proxy, the tests' fake) and a 429's Retry-After kept for the caller in this task."""

    def __init__(self, base: str, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.base = base.rstrip("/")

    async def request(  # the parent's signature
            self, method: str, url: str, params: Any = None, data: Any = None,
            headers: Any = None, auth: Any = None,
            timeout: float | None = None,
            allow_redirects: bool = False) -> Response:
        for real in TWILIO_HOSTS:
            if url.startswith(real):
                url = self.base + url[len(real):]
        response: Response = await super().request(
            method, url, params=params, data=data, headers=headers, auth=auth,
            timeout=timeout, allow_redirects=allow_redirects)
        if response.status_code == 429:
            try:
                _RETRY_AFTER.set(float((response.headers or {}).get("Retry-After", "")))
            except ValueError:
                _RETRY_AFTER.set(None)
        return response


class WhatsAppChannel(Channel):
    """WhatsApp customers through a Twilio sender.

    Args:
        intake: where inbound messages are committed.
        db: for the 24-hour window and delivery statuses.
        account_sid, auth_token: the Twilio account (the token also signs webhooks).
        sender: our WhatsApp number, `whatsapp:+...`; None = reply from the number written to.
        api_base: Twilio REST base URL.
        public_url: the URL Twilio calls us on; signatures are checked against it.
        template_sid, template_variables: the approved template for outside the window.
        max_body: largest webhook body accepted, in bytes.
        max_text: longer customer texts are cut to this many characters.
    """

    name = "whatsapp"
    reply_window = True
    reports_deliveries = True

    def __init__(self, intake: Intake, deliveries: Deliveries, *, account_sid: str,
                 auth_token: str, sender: str | None, api_base: str, public_url: str,
                 template_sid: str | None, template_variables: str | None, max_body: int,
                 max_text: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        super().__init__(intake)
        self.deliveries = deliveries
        self.clock = clock  # the service's: the window is measured on the time it stamps
        self.account_sid = account_sid
        self._token = auth_token
        self.sender = sender
        self.api_base = api_base
        self.public_url = public_url.rstrip("/")
        self.template_sid = template_sid
        self.template_variables = template_variables
        self.max_body = max_body
        self.max_text = max_text
        self.validator = RequestValidator(auth_token)
        self._client: Client | None = None

    @classmethod
    def from_context(cls, ctx: ChannelContext) -> WhatsAppChannel | None:
        s = ctx.settings
        if not s.twilio_account_sid:
            return None
        if s.twilio_auth_token is None:
            raise ConfigError("TWILIO_AUTH_TOKEN is required with TWILIO_ACCOUNT_SID")
        sender = s.twilio_whatsapp_from
        if sender is not None:
            phone = normalise_phone(sender)
            if phone is None:
                raise ConfigError("TWILIO_WHATSAPP_FROM must be a phone number, "
                                  "e.g. whatsapp:+14155238886")
            sender = f"whatsapp:{phone}"
        variables = s.twilio_template_variables
        if variables is not None:
            try:
                if not isinstance(json.loads(variables), dict):
                    raise ValueError
            except ValueError:
                raise ConfigError('TWILIO_TEMPLATE_VARIABLES must be a JSON object, '
                                  'e.g. {"1": "Demo Shop"}') from None
        if ctx.deliveries is None:
            raise ConfigError("the WhatsApp channel needs the core's delivery reports")
        return cls(ctx.intake, ctx.deliveries, account_sid=s.twilio_account_sid,
                   auth_token=s.twilio_auth_token.get_secret_value(), sender=sender,
                   api_base=s.twilio_api_base, public_url=s.public_url,
                   template_sid=s.twilio_template_sid, template_variables=variables,
                   max_body=s.max_body_bytes, max_text=s.max_text_chars, clock=ctx.clock)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(INBOUND_PATH, self.inbound)
        app.router.add_post(STATUS_PATH, self.status)

    def client(self) -> Client:
        """The REST client, made on first use (its HTTP session needs the running loop)."""
        if self._client is None:
            self._client = Client(self.account_sid, self._token,
                                  http_client=_TwilioHttp(self.api_base, timeout=30))
        return self._client

    async def stop(self) -> None:
        if self._client is not None:
            http = self._client.http_client
            if isinstance(http, AsyncTwilioHttpClient):
                await http.close()
            self._client = None

    # --- sending ---------------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        sender = self.sender or message.meta.get("to")
        if not sender:
            raise ChannelPermanentError("no WhatsApp sender: set TWILIO_WHATSAPP_FROM")
        params: dict[str, Any] = {"from_": sender, "to": f"whatsapp:{message.address}",
                                  "status_callback": self.public_url + STATUS_PATH}
        template = None
        chosen = message.meta.get("whatsapp_mode")  # a playbook step decided at send time
        if chosen == "template":
            params["content_sid"] = str(message.meta["content_sid"])
            params["content_variables"] = str(message.meta.get("content_variables") or "{}")
        elif chosen == "text" or self._window_open(message):
            params["body"] = self.text_with_attachments(message)[:MAX_BODY]
        elif self.template_sid:
            template = self.template_sid
            params["content_sid"] = template
            if self.template_variables:
                params["content_variables"] = self.template_variables
        else:
            log.info("twilio: reply %d held: outside the 24-hour window and no "
                     "TWILIO_TEMPLATE_SID to ask the customer to reopen", message.message_id)
            return SendResult(provider_id=None, status=HELD)
        _RETRY_AFTER.set(None)
        try:
            created = await self.client().messages.create_async(**params)
        except (TwilioException, aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc) from exc
        sid = str(created.sid)
        twilio_status = str(created.status or "queued")
        meta: dict[str, Any] = {"twilio_status": twilio_status}
        if template:  # the reopen request went out; the text itself waits for the customer
            meta["whatsapp_template"] = template
            return SendResult(provider_id=sid, status=HELD, meta=meta)
        return SendResult(provider_id=sid, status=STATUS_MAP.get(twilio_status, "sent"),
                          meta=meta)

    def _window_open(self, message: OutboundMessage) -> bool:
        last = message.last_inbound_at
        return last is not None and self.clock() - last < WINDOW

    # --- inbound ---------------------------------------------------------------------------

    async def _signed_form(self, request: web.Request) -> MultiDict[str]:
        if request.content_length is not None and request.content_length > self.max_body:
            raise PayloadTooLarge(f"body over {self.max_body} bytes")
        form = form_fields(await read_body(request), request.content_type)
        url = self.public_url + request.path_qs
        urls = [url]
        if request.get(FORWARDED):  # the URL the trusted proxy says was called
            urls.append(str(request.url))
        signature = request.headers.get("X-Twilio-Signature", "")
        if not signature or not any(self.validator.validate(u, form, signature) for u in urls):
            raise SignatureError(f"missing or wrong X-Twilio-Signature for {' or '.join(urls)}",
                                 status=403)
        return form

    async def inbound(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        message = self.normalise(form)
        if message is not None:
            await self.intake.put(message)
        return web.Response(text=TWIML_EMPTY, content_type="text/xml")

    def normalise(self, form: MultiDict[str]) -> InboundMessage | None:
        sid = form.get("MessageSid") or form.get("SmsMessageSid") or ""
        if not _SID.match(sid):
            raise InputError("MessageSid is missing or malformed")
        sender = form.get("From", "")
        if not sender.startswith("whatsapp:"):
            log.info("twilio: ignoring non-WhatsApp message %s", sid)
            return None
        phone = normalise_phone(sender)
        if phone is None:
            raise InputError("From is not a phone number")
        text = (form.get("Body") or form.get("ButtonText") or "").strip()
        attachments = _attachments(form)
        if not text and not attachments:
            return None
        if len(text) > self.max_text:
            log.warning("twilio: message %s text cut to %d characters", sid, self.max_text)
            text = text[:self.max_text]
        meta = {k: v for k, v in (("to", form.get("To")), ("wa_id", form.get("WaId")),
                                  ("message_type", form.get("MessageType"))) if v}
        name = form.get("ProfileName")
        return InboundMessage(channel=self.name, external_id=sid, address=phone, text=text,
                              display_name=name[:200] if name else None,
                              attachments=attachments, raw_ref=sid, phone=phone, meta=meta)

    async def status(self, request: web.Request) -> web.Response:
        form = await self._signed_form(request)
        sid, raw = form.get("MessageSid", ""), form.get("MessageStatus", "")
        if not _SID.match(sid) or raw not in STATUS_MAP:
            raise InputError("MessageSid or MessageStatus is missing or unknown")
        await self.deliveries.report(status_report(self.name, sid, raw,
                                                   form.get("ErrorCode") or None,
                                                   form.get("ErrorMessage") or None))
        return web.Response(text="")


def status_report(channel: str, sid: str, raw: str, code: str | None,
                  message: str | None) -> DeliveryReport:
    """A Twilio status callback as the core's delivery report; a failure keeps Twilio's code
    and our reading of it (`KNOWN_ERRORS`)."""
    status = STATUS_MAP[raw]
    meta: dict[str, Any] = {"twilio_status": raw}
    error = None
    if code:
        meta["twilio_error"] = {"code": code, "message": message}
    if status == "failed":
        detail = message or KNOWN_ERRORS.get(code or "", "")
        error = f"{raw} {code}: {detail}".strip() if code else raw
    return DeliveryReport(channel, sid, status, meta, error)


def _attachments(form: MultiDict[str]) -> tuple[Attachment, ...]:
    """Media metadata; the URL needs the account's credentials to download."""
    try:
        count = max(0, min(int(form.get("NumMedia") or 0), 10))
    except ValueError:
        count = 0
    found = []
    for i in range(count):
        url, mime = form.get(f"MediaUrl{i}"), form.get(f"MediaContentType{i}")
        if url:
            kind = (mime or "").split("/", 1)[0]
            found.append(Attachment(kind if kind in ("image", "audio", "video") else "document",
                                    mime_type=mime, ref=url))
    lat, lon = form.get("Latitude"), form.get("Longitude")
    if lat and lon:
        found.append(Attachment("location", name=form.get("Label") or form.get("Address"),
                                ref=f"{lat},{lon}"))
    return tuple(found)


def _translate(exc: BaseException) -> ChannelError:
    """The one place Twilio and transport errors become ours (see the module docstring)."""
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status, code = int(exc.status or 0), exc.code
        text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or ""
        if status == 429 or code == 20429:
            return ChannelRateLimited(f"twilio {code}: {text}",
                                      retry_after=_RETRY_AFTER.get() or 1.0)
        if status == 401 or code == 20003:
            return ChannelAuthError(f"twilio refused the credentials ({code})")
        if status >= 500:
            return ChannelTemporaryError(f"twilio {status}: {text}")
        detail = text or KNOWN_ERRORS.get(str(code), "")
        return ChannelPermanentError(f"twilio {code}: {detail}", code=str(code))
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ChannelTemporaryError(f"cannot reach the Twilio API: {exc}")
    if isinstance(exc, aiohttp.ClientError | TimeoutError):
        return ChannelOutcomeUnknown(
            f"outcome unknown (Twilio may have created the message): {type(exc).__name__}")
    return ChannelPermanentError(f"twilio: {exc}")

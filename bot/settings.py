"""The service's configuration: environment first, then `.env`, then defaults; the FAQ's
neural-mode settings are the FAQ package's own (faq/settings.py), checked here at start.

Every value is validated when the service starts; a bad one stops it with a message naming the
variable, never a traceback deep inside a request. Secrets are `SecretStr`, so they never show
up in logs or reprs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import time
from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.desk.routing import parse_days, parse_ranges
from core.errors import ConfigError, FaqError
from faq.settings import SemanticSettings, load_semantic_settings

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_FAQ_DIR = PACKAGE_DIR.parent / "faq" / "sample"
DEFAULT_LIFECYCLE_RULES = PACKAGE_DIR / "data" / "lifecycle.yaml"
DEFAULT_PLAYBOOKS = PACKAGE_DIR / "data" / "playbooks.yaml"
_QUIET = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
LANGUAGES = ("en", "it", "th")


class Settings(BaseSettings):
    """Service settings. Environment variable names are the field names in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- core -----------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite+aiosqlite:///./storedesk.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://...",
    )
    redis_url: str | None = Field(
        None, description="Redis URL; switches the queue to Redis Streams")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = Field(
        "http://127.0.0.1:8080",
        description="URL the platforms call us on (used to check Twilio signatures)",
    )
    trusted_proxies: str = Field(
        "", description="Comma-separated CIDRs of reverse proxies (e.g. 127.0.0.1/32,10.0.0.0/8) "
        "whose X-Forwarded-For / -Proto / -Host are believed: rate limits and logs then see the "
        "visitor's address and Twilio signatures the public URL; empty = believe no one")
    store_name: str = "Our Store"
    default_language: Literal["en", "it", "th"] = "en"
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /api and the dashboard; unset = admin API disabled"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    # --- FAQ and rules --------------------------------------------------------------------
    faq_dir: Path = SAMPLE_FAQ_DIR
    faq_threshold: float | None = Field(None, ge=0.0, le=1.0)
    faq_semantic_model: str | None = None
    lifecycle_rules: Path = DEFAULT_LIFECYCLE_RULES
    repeat_window_minutes: float = Field(
        30.0, gt=0, description="The same question again, nearly word for word, within this time "
        "after its answer goes to a person"
    )
    answer_while_waiting: bool = Field(
        True, description="Answer confident FAQ questions while the customer waits for a person"
    )

    # --- queue ----------------------------------------------------------------------------
    workers: int = Field(2, ge=1, le=64, description="Worker tasks taking inbound messages")
    queue_batch: int = Field(64, ge=1, le=1000)
    match_processes: int | None = Field(
        None, ge=0, le=16,
        description="Helper processes that do the FAQ matching of inbound messages, so it "
                    "runs on another core than the web side (0: in the service process; unset: "
                    "1 for `serve` on more than one core, 0 for `worker` processes, which are "
                    "one per core already; the neural FAQ model always matches in-process)")

    def matching_helpers(self, *, serves_http: bool) -> int:
        """How many matching helpers a process that runs the workers starts."""
        if self.faq_semantic_model:
            return 0
        if self.match_processes is not None:
            return self.match_processes
        return 1 if serves_http and (os.cpu_count() or 1) > 1 else 0
    max_attempts: int = Field(5, ge=1, le=100,
                              description="Tries before a message is dead-lettered")
    inbox_keep_hours: float = Field(
        72.0, ge=1, description="Handled inbox rows are kept this long, so a platform's late "
        "redelivery is still recognised as a duplicate, then removed")
    message_retention_days: int | None = Field(
        None, ge=1, description="Message texts, attachments and escalated questions older "
        "than this many days are blanked (counts and timings stay); unset keeps them")
    http_header_timeout: float = Field(
        10.0, gt=0, le=300, description="A connection that has not sent a whole request head "
        "by then is closed (idle sockets cannot use up the open files)")
    http_keepalive_timeout: float = Field(
        15.0, gt=0, le=3600, description="Idle keep-alive connections are closed after this")
    http_backlog: int = Field(
        4096, ge=16, le=65535, description="Connections the kernel queues before the service "
        "accepts them (capped by net.core.somaxconn); a burst of new web chat pages beyond it "
        "waits a second for a SYN retry")
    http_max_connections: int = Field(
        2000, ge=10, description="Above this many open connections, the silent ones are "
        "closed first")
    send_concurrency: int = Field(
        16, ge=1, le=256, description="Conversations whose replies are being sent at once")
    send_max_attempts: int = Field(8, ge=1, le=100)
    send_timeout: float = Field(
        20.0, ge=1, le=120, description="Seconds one send may take before it is cut and "
        "retried (the platform may have it: a possible duplicate, never a lost answer)")

    # --- scale-out (PostgreSQL + Redis, several processes) ----------------------------------
    redis_prefix: str = Field("storedesk", description="Key prefix in Redis")
    redis_reclaim_seconds: float = Field(
        30.0, gt=0, description="Idle time after which a live worker takes over a dead one's work")
    redis_max_deliveries: int = Field(
        5, ge=1, description="Deliveries of one queue entry before it is dead-lettered")
    leader_ttl_seconds: float = Field(
        15.0, ge=1, description="Lock TTL for singletons (pollers); a dead leader is replaced "
        "after this")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Worker processes serve /metrics, /healthz, /readyz "
        "here (the web process uses PORT)")

    # --- input limits ---------------------------------------------------------------------
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_text_chars: int = Field(4000, ge=1)
    webchat_rate_per_minute: int = Field(30, ge=1)

    # --- web chat -------------------------------------------------------------------------
    webchat_enabled: bool = True
    webchat_allowed_origins: str = Field(
        "", description="Comma-separated origins of the store's pages that may embed the chat "
        "(<script src=PUBLIC_URL/widget.js>) or frame it, e.g. https://shop.example; the API "
        "answers CORS for these only; empty = the standalone page at / only")
    webchat_identity_secret: SecretStr | None = Field(
        None, description="Key the store's server signs its logged-in customer's id with "
        "(identity_hash = hex HMAC-SHA256(key, id)); only a signed identity links a visitor "
        "to a customer; unset = no visitor is ever linked")
    webchat_upload_max_bytes: int = Field(
        5 * 1024 * 1024, ge=1024, le=100 * 1024 * 1024,
        description="Largest image (JPEG, PNG, GIF, WebP) or PDF a visitor may send (413 above)")
    webchat_upload_dir: Path | None = Field(
        None, description="Where visitors' files are kept (default: webchat-files next to the "
        "SQLite database, else ./webchat-files)")
    webchat_email_after_minutes: float = Field(
        10.0, gt=0, le=7 * 24 * 60, description="A staff reply the visitor has not been "
        "connected for this long after is emailed to the address they left, once")
    webchat_reply_minutes: int = Field(
        10, ge=1, le=7 * 24 * 60,
        description="The reply time the widget announces inside BUSINESS_HOURS")
    business_hours: str = Field(
        "", description="When people answer, e.g. 'mon-fri 09:00-18:00, sat 10:00-14:00' "
        "(STORE_TIMEZONE); the widget shows the reply time inside, an away message outside; "
        "empty = always open")
    store_timezone: str = Field("UTC", description="The store's zoneinfo name, e.g. "
                                "Europe/Rome (business hours, playbook quiet hours)")

    # --- dashboard ------------------------------------------------------------------------
    dashboard_cache_seconds: float = Field(
        60.0, ge=0, description="Dashboard charts for the preset periods are computed in the "
        "background and served up to this old; 0 = always compute live")

    # --- Telegram (on when TELEGRAM_TOKEN is set) ------------------------------------------
    telegram_token: SecretStr | None = None
    telegram_mode: Literal["webhook", "polling"] = "webhook"
    telegram_webhook_secret: SecretStr | None = None
    telegram_api_base: str = "https://api.telegram.org"
    telegram_set_webhook: bool = Field(
        False, description="Call setWebhook(PUBLIC_URL/webhooks/telegram) on start")

    # --- WhatsApp through Twilio (on when TWILIO_ACCOUNT_SID is set) ------------------------
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_whatsapp_from: str | None = Field(None, description="e.g. whatsapp:+14155238886")
    twilio_api_base: str = "https://api.twilio.com"
    twilio_template_sid: str | None = Field(
        None, description="Approved template (ContentSid) used outside the 24-hour window")
    twilio_template_variables: str | None = Field(None, description="JSON for the template")

    # --- Email (on when IMAP_HOST or SMTP_HOST is set) -------------------------------------
    imap_host: str | None = None
    imap_port: int = Field(993, ge=1, le=65535)
    imap_ssl: bool = True
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_mailbox: str = "INBOX"
    imap_idle: bool = True
    imap_poll_seconds: float = Field(60.0, gt=0)
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"
    email_from: str | None = Field(None, description="Support <support@shop.example>")
    email_max_auto_replies_per_day: int = Field(
        5, ge=0, description="Bot answers per sender per UTC day; 0 = the bot never answers mail")
    email_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Larger mails are skipped (logged), not fetched")
    imap_first_sync_days: float = Field(
        3.0, ge=0, description="On first start (or a UIDVALIDITY change) take mail this recent")

    # --- Slack: customer channel and staff desk (on when SLACK_BOT_TOKEN is set) -----------
    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_base: str = "https://slack.com/api/"
    slack_customer_channels: list[str] = Field(
        default_factory=list, description="Channel ids whose messages are customer messages")
    slack_staff_channel: str | None = Field(None, description="Default desk channel id")
    desk_routing_file: Path | None = Field(
        None, description="Desk routing rules: teams, channels, hours, on-call "
                          "(default bot/data/routing.yaml)")
    faq_drafts_file: Path = Field(
        Path("faq-drafts.yaml"), description="Where the desk's “Save as FAQ” writes draft "
                                             "entries (kept out of FAQ_DIR; never served)")
    desk_in_dashboard: bool = Field(
        False, description="Staff answer escalations from the dashboard (needs ADMIN_TOKEN): "
                           "the bot tells customers a person will reply, as with the Slack "
                           "desk")

    # --- store platforms' webhooks (each on when its secret is set) --------------------------
    shopify_webhook_secret: SecretStr | None = Field(
        None, description="The app's client secret (or the store's webhook signing key): "
        "POST /webhooks/shopify checks X-Shopify-Hmac-Sha256 with it")
    woocommerce_webhook_secret: SecretStr | None = Field(
        None, description="The secret of the WooCommerce webhooks: POST /webhooks/woocommerce "
        "checks X-WC-Webhook-Signature with it")

    # --- lifecycle schedule ---------------------------------------------------------------
    lifecycle_schedule_seconds: float = Field(
        3600.0, gt=0, description="How often time rules (no order for N days) are applied to "
        "customers nobody heard from")

    # --- lifecycle playbooks (bot/playbooks.py) ---------------------------------------------
    playbooks_file: Path | None = Field(
        DEFAULT_PLAYBOOKS, description="Lifecycle playbooks (YAML, reloaded on change); empty "
        "= no playbook messages are ever sent")
    playbook_tick_seconds: float = Field(
        15.0, gt=0, le=3600, description="How often due playbook steps are looked for")
    playbook_marketing_per_week: int = Field(
        2, ge=0, description="At most this many marketing playbook messages per customer in "
        "any 7 days; further ones are skipped")
    playbook_quiet_hours: str = Field(
        "", description="e.g. 21:00-09:00 in STORE_TIMEZONE: a step due then is moved to the "
        "end of them; empty = none")
    playbook_attribution_days: int = Field(
        7, ge=1, le=365, description="The playbooks panel counts replies, opt-outs, orders and "
        "stage moves within this many days of a step's message")
    unsubscribe_secret: SecretStr | None = Field(
        None, description="Signs the unsubscribe links of playbook mail; unset = a random "
        "secret kept in the database")

    @field_validator("playbooks_file", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("playbook_quiet_hours")
    @classmethod
    def _quiet_hours(cls, value: str) -> str:
        value = value.strip()
        if value and not _QUIET.match(value):
            raise ValueError(f"{value!r} is not a range like 21:00-09:00")
        return value

    @cached_property
    def quiet_hours(self) -> tuple[time, time] | None:
        """(start, end) of the quiet hours in the store's time zone, or None."""
        m = _QUIET.match(self.playbook_quiet_hours)
        if m is None:
            return None
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        return time(h1, m1), time(h2, m2)

    @field_validator("shopify_webhook_secret", "woocommerce_webhook_secret")
    @classmethod
    def _secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty; leave it unset to turn the webhook off")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("webchat_allowed_origins")
    @classmethod
    def _origins_are_origins(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", part):
                raise ValueError(f"{part!r} is not an origin like https://shop.example")
        return value

    @field_validator("webchat_identity_secret")
    @classmethod
    def _identity_secret_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("must be at least 16 characters (e.g. openssl rand -hex 32); "
                             "leave it unset to link no visitor")
        return value

    @field_validator("business_hours")
    @classmethod
    def _hours_parse(cls, value: str) -> str:
        parse_business_hours(value)
        return value

    @field_validator("store_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a zoneinfo name like Europe/Rome") from None
        return value

    @cached_property
    def opening_hours(self) -> dict[int, tuple[tuple[time, time], ...]] | None:
        """BUSINESS_HOURS by weekday (0 = Monday); None = always open."""
        return parse_business_hours(self.business_hours)

    @cached_property
    def webchat_files_dir(self) -> Path:
        if self.webchat_upload_dir is not None:
            return self.webchat_upload_dir
        if self.is_sqlite:
            path = self.database_url.partition(":///")[2]
            if path and not path.startswith(":memory:"):
                return Path(path).parent / "webchat-files"
        return Path("webchat-files")

    @cached_property
    def semantic(self) -> SemanticSettings | None:
        """The FAQ neural mode's settings (FAQ_SEMANTIC_*), read once, when the mode is on."""
        return load_semantic_settings() if self.faq_semantic_model else None

    @cached_property
    def webchat_origins(self) -> frozenset[str]:
        return frozenset(p.strip().lower() for p in self.webchat_allowed_origins.split(",")
                         if p.strip())

    @cached_property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p.strip(), strict=False)
                     for p in self.trusted_proxies.split(",") if p.strip())

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got {value.split(':', 1)[0]!r})"
            )
        return value

    @field_validator("faq_dir", "lifecycle_rules", "playbooks_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.exists():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _admin_token_strength(self) -> Settings:
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and len(token) < 16:
            raise ValueError("ADMIN_TOKEN must be at least 16 characters")
        if self.desk_in_dashboard and token is None:
            raise ValueError("DESK_IN_DASHBOARD needs ADMIN_TOKEN: staff sign in to the "
                             "dashboard with it")
        return self

    @cached_property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def desk_configured(self) -> bool:
        """Staff work in Slack or in the dashboard: the bot may promise customers that a
        person will reply."""
        slack = self.slack_bot_token is not None and bool(self.slack_staff_channel)
        return slack or (self.desk_in_dashboard and self.admin_token is not None)


def parse_business_hours(spec: str) -> dict[int, tuple[tuple[time, time], ...]] | None:
    """'mon-fri 09:00-18:00, sat 10:00-14:00' (a bare range continues the days before it)
    -> weekday -> windows; '' -> None. ValueError names the part it cannot read."""
    if not spec.strip():
        return None
    hours: dict[int, tuple[tuple[time, time], ...]] = {}
    days: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        words = part.split()
        if len(words) == 2:
            days = parse_days(words[0].lower())
            windows = parse_ranges(words[1])
        elif len(words) == 1 and days:
            windows = parse_ranges(words[0])
        else:
            raise ValueError(f"{part!r}: write days and hours like 'mon-fri 09:00-18:00'")
        for d in days:
            hours[d] = hours.get(d, ()) + windows
    return hours


def _invalid(exc: ValidationError, prefix: str = "") -> ConfigError:
    lines = []
    for err in exc.errors():
        name = (prefix + ".".join(str(p) for p in err["loc"])).upper() or "settings"
        lines.append(f"  {name}: {err['msg']}")
    return ConfigError("invalid configuration:\n" + "\n".join(lines))


def load_settings(**overrides: object) -> Settings:
    """Build settings or raise ConfigError with one line per bad variable.

    With the neural FAQ mode on, its own settings are checked too, so a bad one stops the
    service at start rather than at the first FAQ build.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise _invalid(exc) from None
    if settings.faq_semantic_model:
        try:
            _ = settings.semantic  # read and checked once, then kept with the settings
        except FaqError as exc:
            raise ConfigError(str(exc)) from None
    return settings

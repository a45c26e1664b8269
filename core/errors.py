"""The one error hierarchy of the service.

    BotError
    ├── ConfigError               bad settings or files; stops start-up with a clear message
    │   └── PlaybookError         a playbooks file: names the file, the line and the field
    ├── FaqError                  an FAQ file cannot be used
    │   └── FaqLoadError          names the file, the line and the problem
    ├── QueueError                the durable queue cannot accept or hand out work
    ├── InputError                a request or payload we refuse (mapped to a 4xx)
    │   ├── SignatureError        webhook signature missing or wrong (401/403)
    │   ├── PayloadTooLarge       over the configured size limit (413)
    │   └── RateLimited           a sender over its rate (429)
    └── ChannelError              talking to a platform failed
        ├── ChannelAuthError      credentials refused: permanent until config changes
        ├── ChannelRateLimited    the platform asked us to wait `retry_after` seconds
        ├── ChannelTemporaryError 5xx, timeouts, connection drops: retry with backoff
        └── ChannelPermanentError the platform refused this message for good (bad chat id...)

Channels translate vendor exceptions into these in exactly one place, so the outbox can decide
"retry later" versus "record a permanent failure" without knowing any SDK.
"""

from __future__ import annotations


class BotError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(BotError):
    """Settings or configuration files that cannot be used."""


class PlaybookError(ConfigError):
    """One problem in the playbooks file, with where it is."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"{path}:{line}: {problem}" if line else f"{path}: {problem}")


class FaqError(BotError):
    """An FAQ directory or file that cannot be used."""


class FaqLoadError(FaqError):
    """One problem in one FAQ file, with where it is."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")


class QueueError(BotError):
    """The durable queue cannot accept or hand out work."""


class InputError(BotError):
    """Input we refuse; carries the HTTP status it maps to."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class SignatureError(InputError):
    status = 401


class PayloadTooLarge(InputError):
    status = 413


class RateLimited(InputError):
    status = 429

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelError(BotError):
    """Sending to or reading from a platform failed."""


class ChannelAuthError(ChannelError):
    """The platform refused our credentials."""


class ChannelRateLimited(ChannelError):
    """The platform asked us to slow down."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelTemporaryError(ChannelError):
    """A failure worth retrying: 5xx, timeouts, dropped connections."""


class ChannelOutcomeUnknown(ChannelTemporaryError):
    """The request left but no answer came back (timeout, dropped connection): the platform may
    have the message. Retried, since a possible duplicate is better than a lost answer."""


class ChannelPermanentError(ChannelError):
    """The platform refused this message for good; retrying would not help."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code

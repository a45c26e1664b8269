"""The FAQ neural mode's own settings (FAQ_SEMANTIC_*): the service builds them once at start
(bot/settings.py checks them with the rest) and passes them in; the `faq` command line reads
them when it builds a matcher."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import FaqError


class SemanticSettings(BaseSettings):
    """The FAQ neural mode's tuning (faq/semantic.py), read when FAQ_SEMANTIC_MODEL is set.

    Variables are the field names in upper case after FAQ_SEMANTIC_ (FAQ_SEMANTIC_THREADS...).
    """

    model_config = SettingsConfigDict(
        env_prefix="FAQ_SEMANTIC_", env_file=".env", env_file_encoding="utf-8", extra="ignore",
        case_sensitive=False,
    )

    int8: bool = Field(True, description="Linear layers in int8: about 3x faster per question")
    threads: int = Field(1, ge=1, le=64, description="Torch threads for one question")
    adapt: bool = Field(True, description="Fine-tune the model's top layers on the FAQ")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "storedesk" / "faq-semantic",
        description="Where adapted layers are kept between restarts",
    )


def load_semantic_settings() -> SemanticSettings:
    """The neural mode's settings from the environment, or FaqError naming each bad variable."""
    try:
        return SemanticSettings()
    except ValidationError as exc:
        lines = [f"  FAQ_SEMANTIC_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
                 for err in exc.errors()]
        raise FaqError("invalid configuration:\n" + "\n".join(lines)) from None

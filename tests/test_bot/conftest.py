"""Fixtures shared by the bot tests: the store service (`shop`) with its webhook secrets and
frozen `clock`, and `http`, a client of it."""

from tests.test_bot.test_store_webhooks import clock, http, shop

__all__ = ["clock", "http", "shop"]

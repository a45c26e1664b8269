"""The playbooks file: the shipped sample, durations, and a clear error per bad field with its
file and line; a broken reload keeps the last good playbooks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bot.playbooks import PlaybookStore, load_playbooks, parse_duration
from bot.settings import DEFAULT_PLAYBOOKS, load_settings
from core.errors import ConfigError, PlaybookError

GOOD = """\
playbooks:
  - name: post_purchase
    trigger: {order: delivered}
    stop: [replied]
    steps:
      - delay: 30s
        kind: transactional
        message: {en: "Hi $name", it: "Ciao $name", th: "สวัสดี $name"}
"""


def test_the_sample_has_the_six_playbooks_and_the_two_rating_questions() -> None:
    books = load_playbooks(DEFAULT_PLAYBOOKS)
    assert [p.name for p in books.playbooks] == [
        "welcome", "abandoned_cart", "post_purchase", "review_request", "win_back",
        "points_expiring", "answer_check", "recommend"]
    asks = {p.name: p.steps[0].ask for p in books.playbooks if p.steps[0].ask}
    assert asks == {"answer_check": "csat", "recommend": "nps"}
    for playbook in books.playbooks:
        for step in playbook.steps:
            assert set(step.message) == {"en", "it", "th"}
    assert books.get("review_request").steps[0].trigger.min == 4  # type: ignore[union-attr]
    assert books.idle_triggers() == [timedelta(days=90)]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("10m", 600), ("2h", 7200), ("3d", 3 * 86400), ("2w", 14 * 86400),
    ("1mo", 30 * 86400), ("0s", 0)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(("old", "new", "line", "says"), [
    ("delay: 30s", "delay: 3 days", 6, "delay '3 days' is not a duration like 30s"),
    ("kind: transactional", "kind: spam", 7, "kind 'spam' is not one of transactional, "
                                             "marketing"),
    ("{order: delivered}", "{order: shipped}", 3, "trigger order 'shipped' is not one of "
                                                  "created, paid"),
    ("stop: [replied]", "stop: [bored]", 4, "stop 'bored' is not one of replied"),
    ("message: {en:", "mesage: {en:", 8, "unknown key 'mesage'"),
    ("it: \"Ciao $name\"", "de: \"Hallo\"", 8, "unknown key 'de'; allowed: en, it, th"),
    ("name: post_purchase", "name: Post Purchase", 2, "must be lowercase letters"),
    ("kind: transactional", "kind: transactional\n        ask: stars", 8,
     "ask 'stars' is not one of csat, nps"),
    ("      - delay: 30s\n", "      - conditions: {min_orders: many}\n        delay: 30s\n", 6,
     "min_orders must be a whole number"),
])
def test_a_bad_field_is_named_with_its_line(tmp_path: Path, old: str, new: str, line: int,
                                            says: str) -> None:
    path = tmp_path / "playbooks.yaml"
    assert old in GOOD
    path.write_text(GOOD.replace(old, new), encoding="utf-8")
    with pytest.raises(PlaybookError) as caught:
        load_playbooks(path)
    assert caught.value.line == line, str(caught.value)
    assert says in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}: ")


def test_yaml_syntax_errors_have_a_line(tmp_path: Path) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(GOOD + "  - name: [unclosed\n", encoding="utf-8")
    with pytest.raises(PlaybookError, match="YAML syntax error"):
        load_playbooks(path)


def test_a_bad_file_stops_the_service_at_start_and_a_missing_one_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PLAYBOOKS_FILE"):
        load_settings(_env_file=None, playbooks_file=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("30s", "soon"), encoding="utf-8")
    with pytest.raises(PlaybookError, match=r"bad\.yaml:6"):
        PlaybookStore(load_settings(_env_file=None, playbooks_file=bad).playbooks_file)
    assert load_settings(_env_file=None, playbooks_file="").playbooks_file is None


def test_a_broken_reload_keeps_the_last_good_playbooks(tmp_path: Path) -> None:
    path = tmp_path / "playbooks.yaml"
    path.write_text(GOOD, encoding="utf-8")
    store = PlaybookStore(path)
    path.write_text(GOOD.replace("30s", "later"), encoding="utf-8")
    assert store.reload() is False
    assert store.last_error is not None and store.last_error.line == 6
    assert store.playbooks.get("post_purchase") is not None
    path.write_text(GOOD.replace("30s", "2h"), encoding="utf-8")
    assert store.reload() is True
    step = store.playbooks.get("post_purchase").steps[0]  # type: ignore[union-attr]
    assert step.delay == timedelta(hours=2)


def test_score_triggers_need_a_score_in_their_range() -> None:
    from bot.playbooks import Trigger

    happy = Trigger("nps", min=9, max=10)
    assert [happy.matches("nps", score=s) for s in (8, 9, 10, 11)] == [False, True, True, False]
    assert not happy.matches("nps") and not happy.matches("csat", score=9)
    assert Trigger("csat").matches("csat", score=1)

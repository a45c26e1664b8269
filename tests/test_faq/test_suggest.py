"""Grouping unanswered questions into draft FAQ entries a shop owner can finish."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import FaqLoadError
from faq.loader import lint_faq_dir, load_faq_dir
from faq.suggest import group_questions, render_yaml

QUESTIONS = [
    "Where is my order?", "where is my order", "Where is my order??", "wher is my order",
    "Do you ship to Canada?", "do you ship to canada",
    "where is my refund",
    "ส่งไปเชียงใหม่กี่วัน", "ส่งเชียงใหม่กี่วันคะ",
    "Avete la taglia 48?",
]


def test_similar_questions_are_grouped_most_frequent_first() -> None:
    groups = group_questions(QUESTIONS)
    assert groups[0].count == 4
    assert groups[0].representative == "Where is my order?"
    assert "wher is my order" in groups[0].questions
    assert [g.count for g in groups] == sorted((g.count for g in groups), reverse=True)
    assert sum(g.count for g in groups) == len(QUESTIONS)
    refund = next(g for g in groups if "where is my refund" in g.questions)
    assert refund is not groups[0]  # one different word is a different question
    thai = next(g for g in groups if "ส่งไปเชียงใหม่กี่วัน" in g.questions)
    assert thai.count == 2


def test_drafts_are_never_served_until_finished(tmp_path: Path) -> None:
    """Copied into the FAQ folder as downloaded, the drafts are not served (no customer gets
    "TODO") and `faq lint` says why; with answers written and the mark removed, they load."""
    text = render_yaml(group_questions(QUESTIONS))
    assert "id: where_is_my_order" in text and "TODO" in text
    (tmp_path / "real.yaml").write_text(
        "- id: hours\n  questions: ['opening hours?']\n  answer: 9 to 5\n", encoding="utf-8")
    (tmp_path / "draft.yaml").write_text(text, encoding="utf-8")
    assert [e.id for e in load_faq_dir(tmp_path)] == ["hours"]
    problems = [p for p in lint_faq_dir(tmp_path) if p.level == "error"]
    assert len(problems) == len(group_questions(QUESTIONS))
    assert all("is a draft" in p.message and p.path.endswith("draft.yaml") for p in problems)

    finished = text.replace("TODO", "Our answer").replace("draft: true\n", "")
    (tmp_path / "draft.yaml").write_text(finished, encoding="utf-8")
    entries = [e for e in load_faq_dir(tmp_path) if e.id != "hours"]
    assert len(entries) == len(group_questions(QUESTIONS))
    assert len({e.id for e in entries}) == len(entries)
    assert all({"en", "it", "th"} <= set(e.answers) for e in entries)


def test_nothing_to_group() -> None:
    assert group_questions([]) == []
    assert group_questions(["  ", "?!"]) == []


def test_a_placeholder_answer_is_an_error_not_an_answer(tmp_path: Path) -> None:
    (tmp_path / "faq.yaml").write_text(
        "- id: hours\n  questions: ['opening hours?']\n  answer:\n    en: TODO\n    it: Dalle 9\n",
        encoding="utf-8")
    errors = [p for p in lint_faq_dir(tmp_path) if p.level == "error"]
    assert len(errors) == 1 and "placeholder 'TODO'" in errors[0].message
    assert errors[0].line == 4  # the answer's line
    with pytest.raises(FaqLoadError):
        load_faq_dir(tmp_path)

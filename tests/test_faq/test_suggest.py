"""Grouping unanswered questions into draft FAQ entries a shop owner can finish."""

from __future__ import annotations

from pathlib import Path

from faq.loader import load_faq_dir
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


def test_rendered_yaml_loads_once_answers_are_filled(tmp_path: Path) -> None:
    text = render_yaml(group_questions(QUESTIONS))
    assert "id: where_is_my_order" in text and "TODO" in text
    (tmp_path / "draft.yaml").write_text(text.replace("TODO", "Our answer"), encoding="utf-8")
    entries = load_faq_dir(tmp_path)
    assert len(entries) == len(group_questions(QUESTIONS))
    assert len({e.id for e in entries}) == len(entries)
    assert all({"en", "it", "th"} <= set(e.answers) for e in entries)


def test_nothing_to_group() -> None:
    assert group_questions([]) == []
    assert group_questions(["  ", "?!"]) == []

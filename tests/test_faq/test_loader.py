"""FAQ files: the sample loads, and every mistake is reported with file and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import FaqLoadError
from faq.loader import lint_faq_dir, load_faq_dir
from faq.models import STAGES, FaqEntry

from .conftest import SAMPLE_DIR

GOOD = """\
- id: shipping_costs
  stage: awareness
  questions:
    - How much is shipping?
  answer:
    en: Free over 60 euro.
"""


def test_sample_faq_is_complete(sample_entries: list[FaqEntry]) -> None:
    assert len(sample_entries) >= 28
    files = {Path(e.source).name for e in sample_entries}
    assert {"shipping.yaml", "orders.yaml", "returns.yaml", "payments.yaml", "account.yaml",
            "products.yaml", "loyalty.yaml", "people.yaml"} <= files
    for entry in sample_entries:
        if entry.kind == "small_talk" and not entry.answers:  # "ok" needs no reply
            continue
        assert {"en", "it", "th"} <= set(entry.answers), entry.id
        assert 4 <= len(entry.questions) <= 12, entry.id
        assert entry.stage is None or entry.stage in STAGES
    by_id = {e.id: e for e in sample_entries}
    assert by_id["talk_to_human"].escalate and by_id["talk_to_human"].stage is None
    assert by_id["complaint"].stage == "at_risk"


def test_sample_lints_clean() -> None:
    assert lint_faq_dir(SAMPLE_DIR) == []


def test_entry_knows_its_file_and_line(write_faq: Callable[[str, str], Path]) -> None:
    directory = write_faq("a.yaml", "# comment\n\n" + GOOD)
    [entry] = load_faq_dir(directory)
    assert entry.source.endswith("a.yaml") and entry.line == 3
    assert entry.answer_for("it") == ("Free over 60 euro.", "en")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("- id: x\n  questions: [hi]\n  answer: ok\n  anwser: no\n", 4, "did you mean 'answer'"),
        ("- id: x\n  questions: [hi]\n", 1, "missing 'answer'"),
        ("- id: x\n  questions: hello\n  answer: ok\n", 2, "must be a list"),
        ("- id: x\n  questions: []\n  answer: ok\n", 2, "empty"),
        ("- id: x\n  questions: [hi]\n  answer: ok\n  stage: sales\n", 4, "stage 'sales'"),
        ("- id: x\n  questions: [hi]\n  answer: ok\n  escalate: maybe\n", 4, "true or false"),
        ("- id: x\n  questions: [hi\n  answer: ok\n", 3, "YAML syntax error"),
        ("id: x\n", 1, "YAML list"),
        ("- id: x\n  questions: [hi]\n  answer: {en: ok, english: no}\n", 3, "'english'"),
    ],
)
def test_load_errors_name_file_line_and_problem(
    write_faq: Callable[[str, str], Path], text: str, line: int, words: str
) -> None:
    directory = write_faq("broken.yaml", text)
    with pytest.raises(FaqLoadError) as caught:
        load_faq_dir(directory)
    error = caught.value
    assert error.path.endswith("broken.yaml")
    assert error.line == line
    assert words in error.problem
    assert f"broken.yaml:{line}:" in str(error)


def test_duplicate_id_points_at_the_first(write_faq: Callable[[str, str], Path]) -> None:
    write_faq("a.yaml", GOOD)
    directory = write_faq("b.yaml", "- id: other\n  questions: [x]\n  answer: y\n" + GOOD)
    with pytest.raises(FaqLoadError) as caught:
        load_faq_dir(directory)
    assert caught.value.path.endswith("b.yaml") and caught.value.line == 4
    assert "duplicate id 'shipping_costs'" in caught.value.problem
    assert "a.yaml:1" in caught.value.problem


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FaqLoadError, match="not found"):
        load_faq_dir(tmp_path / "nope")
    with pytest.raises(FaqLoadError, match=r"no \*\.yaml"):
        load_faq_dir(tmp_path)


def test_lint_reports_every_problem_and_near_duplicates(
    write_faq: Callable[[str, str], Path],
) -> None:
    write_faq("a.yaml", GOOD)
    directory = write_faq(
        "b.yaml",
        "- id: shipping_price\n  questions: ['How much is the shipping?']\n  answer: x\n"
        "- id: broken\n  questions: [a]\n  stage: nope\n",
    )
    problems = lint_faq_dir(directory)
    errors = [p for p in problems if p.level == "error"]
    warnings = [p for p in problems if p.level == "warning"]
    assert {p.line for p in errors} == {4, 6}  # missing answer (entry line) and bad stage
    duplicate = [w for w in warnings if "shipping_costs" in w.message]
    assert duplicate and duplicate[0].path.endswith("b.yaml") and duplicate[0].line == 1
    assert any("no it/th text" in w.message for w in warnings)

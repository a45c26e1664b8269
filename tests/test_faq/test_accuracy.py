"""Accuracy on public intent datasets with 10 phrasings per entry (bench/faq_data.py protocol).

The same floors as the benchmark targets, on the full query sets, so a change to normalisation
or weighting that costs accuracy fails here and not only in a benchmark run.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from faq.matcher import Matcher

from .conftest import REPO_ROOT, shared_data


def _faq_data() -> ModuleType:
    shared_data("faq-eval", "banking77", "train.csv")
    path = REPO_ROOT / "bench" / "faq_data.py"
    spec = importlib.util.spec_from_file_location("faq_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["faq_data"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("dataset", "floor"),
    [("banking77", 0.72), ("bitext", 0.90), ("clinc150", 0.78), ("xsid_italian", 0.85)],
)
def test_top1_accuracy_stays_above_the_target(dataset: str, floor: float) -> None:
    data = getattr(_faq_data(), dataset)()
    matcher = Matcher(data.entries)
    in_scope = [(text, expected) for text, expected in data.queries if expected is not None]
    if dataset == "bitext":
        in_scope = in_scope[::4]  # 21,164 queries; every 4th keeps the test quick
    right = sum(
        1 for text, expected in in_scope
        if (candidates := matcher.match(text).candidates) and candidates[0].entry_id == expected
    )
    assert right / len(in_scope) >= floor


def test_out_of_scope_questions_are_mostly_escalated_at_the_default_threshold() -> None:
    data = _faq_data().clinc150()
    matcher = Matcher(data.entries)
    out_of_scope = [text for text, expected in data.queries if expected is None]
    answered = sum(1 for text in out_of_scope if matcher.match(text).decision == "answer")
    assert answered / len(out_of_scope) <= 0.12

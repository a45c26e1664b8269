"""FAQ adaptation of the neural mode (FAQ_SEMANTIC_ADAPT): batches and cache key in plain
Python, the training and the store's background adaptation with the `semantic` extra."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faq import semantic
from faq.matcher import Matcher

from .conftest import SEMANTIC_FAQ as FAQ
from .conftest import needs_model


def test_adaptation_is_on_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAQ_SEMANTIC_ADAPT", raising=False)
    assert semantic.adaptation_enabled()
    monkeypatch.setenv("FAQ_SEMANTIC_ADAPT", "0")
    assert not semantic.adaptation_enabled()


def test_batches_pair_two_different_phrasings_of_distinct_entries() -> None:
    sizes = [2, 5, 3, 10, 4]
    neighbours = np.array([np.roll(np.arange(5), -i) for i in range(5)])
    batches = semantic.contrastive_batches(sizes, neighbours, steps=50, per_batch=3, seed=1)
    assert len(batches) == 50
    for batch in batches:
        entries = [entry for entry, _, _ in batch]
        assert len(entries) == 3 == len(set(entries))  # one pair per entry: no false negative
        for entry, first, second in batch:
            assert first != second
            assert 0 <= first < sizes[entry] and 0 <= second < sizes[entry]
    assert any([e for e, _, _ in b] in neighbours[:, :3].tolist() for b in batches)


def test_batches_are_reproducible() -> None:
    neighbours = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    first = semantic.contrastive_batches([3, 3, 3], neighbours, steps=5, per_batch=2, seed=7)
    again = semantic.contrastive_batches([3, 3, 3], neighbours, steps=5, per_batch=2, seed=7)
    assert first == again


def test_cache_key_follows_the_phrasings_and_their_entries() -> None:
    key = semantic.adaptation_key("model", FAQ)
    assert semantic.adaptation_key("model", list(FAQ)) == key
    assert semantic.adaptation_key("other-model", FAQ) != key
    reworded = [FAQ[0], replace(FAQ[1], questions=("Return an item?", "Can I send it back?")),
                FAQ[2]]
    assert semantic.adaptation_key("model", reworded) != key
    moved = [replace(FAQ[0], questions=(*FAQ[0].questions, "When are you open?")),
             FAQ[1], replace(FAQ[2], questions=("What are your hours?", "Hours?"))]
    assert semantic.adaptation_key("model", moved) != key


@needs_model
def test_adapted_faq_is_trained_once_then_loaded_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAQ_SEMANTIC_ADAPT", "1")
    monkeypatch.setenv("FAQ_SEMANTIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(semantic, "ADAPT_STEPS", 4)  # enough to exercise it, not to learn much
    assert semantic.adaptation_pending("minilm", FAQ)
    matcher = semantic.with_semantic(Matcher(FAQ), "minilm")
    stored = list(tmp_path.glob("*.pt"))
    assert len(stored) == 1
    written = stored[0].stat().st_mtime_ns
    assert matcher.match("how much does delivery cost me?").faq_id == "shipping_costs"

    again = semantic.with_semantic(Matcher(FAQ), "minilm")
    assert [p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")] == [written]
    assert again.match("can I send it back?").faq_id == "returns"


FAQ_YAML = "".join(
    f"- id: {entry.id}\n  questions:\n"
    + "".join(f'    - "{question}"\n' for question in entry.questions)
    + f'  answer: "{entry.answers["en"]}"\n'
    for entry in FAQ
)


@needs_model
def test_store_answers_at_once_and_swaps_in_the_adapted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service must not wait minutes for training: the plain model answers first."""
    from faq.store import FaqStore

    monkeypatch.setenv("FAQ_SEMANTIC_ADAPT", "1")
    monkeypatch.setattr(semantic, "ADAPT_STEPS", 4)
    (tmp_path / "faq").mkdir()
    (tmp_path / "faq" / "shop.yaml").write_text(FAQ_YAML, encoding="utf-8")
    store = FaqStore(tmp_path / "faq", semantic_model="minilm")
    assert store.adaptation is not None
    assert store.matcher.threshold == semantic.DEFAULT_SEMANTIC_THRESHOLD  # the plain model
    assert store.matcher.match("what does delivery cost?").faq_id == "shipping_costs"
    store.adaptation.join(timeout=300)
    assert store.version == 2
    assert store.matcher.threshold == semantic.DEFAULT_ADAPTED_THRESHOLD
    assert store.matcher.match("how much does delivery cost me?").faq_id == "shipping_costs"

    restarted = FaqStore(tmp_path / "faq", semantic_model="minilm")
    assert restarted.adaptation is None  # cached on disk: adapted from the start
    assert restarted.matcher.threshold == semantic.DEFAULT_ADAPTED_THRESHOLD


@needs_model
def test_adapted_model_runs_fast_without_quantising_its_trained_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bfloat16 where the CPU has it, else int8 frozen layers: its trained layers are never
    int8 (that lost 0.3 point), and its vectors stay those of the float32 model."""
    import torch

    monkeypatch.setenv("FAQ_SEMANTIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(semantic, "ADAPT_STEPS", 4)
    fast, _ = semantic.adapted_model("minilm", FAQ, int8=True)
    exact, _ = semantic.adapted_model("minilm", FAQ, int8=False)
    layers = fast[0].auto_model.encoder.layer
    in_bf16 = next(fast.parameters()).dtype == torch.bfloat16
    trained = [type(m).__module__ for m in layers[-semantic.ADAPT_TRAINED_LAYERS:].modules()]
    assert not any("quantized" in module for module in trained)
    assert in_bf16 or any("quantized" in type(m).__module__ for m in layers[0].modules())
    questions = ["where is my order?", "can I pay with PayPal or only by card?", "hi"]
    similarity = np.sum(semantic.Encoder(fast).encode(questions)
                        * semantic.Encoder(exact).encode(questions), axis=1)
    assert similarity.min() > 0.99

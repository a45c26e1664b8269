"""Whitening of phrasing embeddings (faq/semantic.py): plain numpy, runs without the extra."""

from __future__ import annotations

import numpy as np

from faq.semantic import whitening


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _faq_vectors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two entries, 10 phrasings each, 16 dimensions: entries differ a little along axis 0,
    their phrasings vary a lot along axis 1 (wording that says nothing about the entry)."""
    base = np.zeros(16)
    base[2] = 1.0
    means = [base + np.eye(16)[0] * 0.15, base - np.eye(16)[0] * 0.15]
    rows = []
    for mean in means:
        noise = rng.normal(size=(10, 16)) * 0.02
        noise[:, 1] = rng.normal(size=10) * 0.6
        rows.append(mean + noise)
    vectors = _unit(np.concatenate(rows))
    starts = np.array([0, 10], dtype=np.int64)
    return vectors, starts, np.array(means)


def _nearest_centroid(vectors: np.ndarray, starts: np.ndarray, query: np.ndarray) -> int:
    centroids = _unit(np.add.reduceat(vectors, starts, axis=0))
    return int(np.argmax(centroids @ _unit(query[None, :])[0]))


def test_whitening_discounts_wording_and_weights_what_separates_entries() -> None:
    rng = np.random.default_rng(7)
    vectors, starts, means = _faq_vectors(rng)
    # Entry 0's meaning, worded far along the wording axis: the raw cosine picks entry 1.
    query = means[0] + np.eye(16)[1] * 1.2
    tilted = vectors.copy()
    tilted[10:, 1] += 0.3  # entry 1's phrasings happen to lean that way
    tilted = _unit(tilted)
    assert _nearest_centroid(tilted, starts, query) == 1
    matrix = whitening(tilted, starts)
    assert _nearest_centroid(_unit(tilted @ matrix), starts, query @ matrix) == 0


def test_entries_with_one_phrasing_leave_the_space_as_it_is() -> None:
    one_each = _unit(np.random.default_rng(5).normal(size=(4, 32)))
    np.testing.assert_allclose(whitening(one_each, np.arange(4, dtype=np.int64)), np.eye(32))

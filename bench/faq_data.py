"""The evaluation protocol of /work/shared/data/README.md, as code both benchmarks share.

One FAQ entry per intent with K = 10 phrasings sampled with a fixed seed from the training
data; every held-out query is matched against it.

- Banking77: only train.csv is shipped, so it is split: 10 phrasings per intent -> FAQ, all the
  other rows -> queries.
- CLINC150: FAQ from train.json, queries = val.json (in scope) + oos_val.json (must not be
  answered).
- Bitext: one file: 10 per intent -> FAQ, the rest -> queries.
- xSID Italian: 300 Italian queries over 15 intents (weather/find has 80, alarm/modify_alarm 1).
  FAQ phrasings come from the Italian side (an Italian shop writes its FAQ in Italian): up to
  10 per intent but never more than half of an intent's rows, so every intent keeps queries;
  intents with a single row are dropped. Queries = all other Italian rows. The English
  originals (`text_en`) are not used: a lexical matcher cannot bridge languages.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from faq.models import FaqEntry

SEED = 13
K = 10
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "faq-eval"


@dataclass(frozen=True)
class Dataset:
    name: str
    entries: list[FaqEntry]
    queries: list[tuple[str, str | None]]  # (text, expected intent or None for out of scope)


def _split(
    name: str, rows: Sequence[tuple[str, str]], *, half_cap: bool = False, seed: int = SEED
) -> tuple[list[FaqEntry], list[tuple[str, str | None]]]:
    by_intent: dict[str, list[str]] = defaultdict(list)
    for text, intent in rows:
        by_intent[intent].append(text)
    rng = random.Random(f"{seed}-{name}")
    entries: list[FaqEntry] = []
    queries: list[tuple[str, str | None]] = []
    for intent in sorted(by_intent):
        texts = by_intent[intent]
        k = min(K, len(texts) // 2) if half_cap else K
        if k == 0:
            continue
        picked = set(rng.sample(range(len(texts)), k))
        entries.append(
            FaqEntry(
                id=intent,
                questions=tuple(texts[i] for i in sorted(picked)),
                answers={"default": intent},
            )
        )
        queries.extend((t, intent) for i, t in enumerate(texts) if i not in picked)
    return entries, queries


def banking77() -> Dataset:
    with (DATA_DIR / "banking77" / "train.csv").open(encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    entries, queries = _split("banking77", rows)
    return Dataset("Banking77", entries, queries)


def bitext() -> Dataset:
    path = DATA_DIR / "bitext" / "bitext_customer_support_dev.csv"
    with path.open(encoding="utf-8") as handle:
        rows = [(r["utterance"], r["intent"]) for r in csv.DictReader(handle)]
    entries, queries = _split("bitext", rows)
    return Dataset("Bitext", entries, queries)


def clinc150() -> Dataset:
    folder = DATA_DIR / "clinc150"
    train = [(t, i) for t, i in json.loads((folder / "train.json").read_text())]
    entries, _ = _split("clinc150", train)
    queries: list[tuple[str, str | None]] = [
        (t, i) for t, i in json.loads((folder / "val.json").read_text())
    ]
    queries += [(t, None) for t, _ in json.loads((folder / "oos_val.json").read_text())]
    return Dataset("CLINC150", entries, queries)


def xsid(lang: str = "it", seed: int = SEED) -> Dataset:
    """xSID in one language (`it` or `en`); another `seed` draws another FAQ from the rows."""
    path = DATA_DIR / "xsid" / f"xsid_{lang}_valid.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    pairs = [(r["text"], r["intent"]) for r in rows]
    entries, queries = _split(f"xsid-{lang}", pairs, half_cap=True, seed=seed)
    return Dataset(f"xSID-{lang}", entries, queries)


def xsid_italian() -> Dataset:
    return xsid("it")


ALL = (banking77, bitext, clinc150, xsid_italian)


def oos_operating_point(
    scored: Sequence[tuple[float, bool, bool]], max_oos_rate: float = 0.10
) -> tuple[float, float]:
    """Best (threshold, in-scope answered correctly) with at most `max_oos_rate` OOS answered.

    `scored` holds (score, is_out_of_scope, top1_correct) per query; a query is answered when
    its score is >= the threshold.
    """
    oos_scores = sorted((s for s, oos, _ in scored if oos), reverse=True)
    in_scope = [(s, ok) for s, oos, ok in scored if not oos]
    if not oos_scores or not in_scope:
        return 0.0, 0.0
    allowed = int(max_oos_rate * len(oos_scores))
    # Threshold just above the (allowed+1)-th highest OOS score.
    threshold = oos_scores[allowed] + 1e-9 if allowed < len(oos_scores) else 0.0
    answered_ok = sum(1 for s, ok in in_scope if ok and s >= threshold)
    return threshold, answered_ok / len(in_scope)

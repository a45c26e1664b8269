"""Turn questions the bot could not answer into draft FAQ entries.

Shop owners will not read 500 raw messages; they will fill in 10 answers. So questions are
grouped by similarity (rapidfuzz on normalised text), the biggest groups first, and each group
becomes a ready-to-edit YAML entry whose phrasings are the customers' own words.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml
from rapidfuzz import fuzz, process

from faq.language import detect_language
from faq.normalize import STOPWORDS, normalize

GROUP_SIMILARITY = 75.0
MAX_PHRASINGS_PER_ENTRY = 8
TODO = "TODO"


@dataclass(slots=True)
class QuestionGroup:
    """Similar questions; `count` includes repeats, `representative` is the most asked one."""

    questions: list[str] = field(default_factory=list)
    count: int = 0

    @property
    def representative(self) -> str:
        return self.questions[0] if self.questions else ""


def _content(normal: str) -> str:
    """The words that carry the meaning: "where is my order" and "where is my refund" differ
    in one word out of four, but in one out of two once stopwords are gone."""
    words = [w for w in normal.split() if w not in STOPWORDS]
    return " ".join(words) or normal


def _similarity(a: str, b: str, **_: object) -> float:
    """Word-order-insensitive similarity that still works for Thai (no spaces)."""
    return max(fuzz.token_sort_ratio(a, b), fuzz.ratio(a, b))


def group_questions(
    questions: Sequence[str], *, similarity: float = GROUP_SIMILARITY
) -> list[QuestionGroup]:
    """Group similar questions, most frequent group first.

    Greedy leader clustering: questions are visited from the most to the least frequent, and
    each joins the first group whose leader is at least `similarity` (0-100) alike. Simple and
    predictable, which matters more here than a perfect clustering.
    """
    counts: Counter[str] = Counter()
    original: dict[str, Counter[str]] = {}
    for question in questions:
        text = " ".join(question.split())
        key = _content(normalize(text))
        if not key:
            continue
        counts[key] += 1
        original.setdefault(key, Counter())[text] += 1
    leaders: list[str] = []
    groups: list[QuestionGroup] = []
    members: list[list[tuple[int, str]]] = []
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], len(kv[0]), kv[0])):
        best = process.extractOne(key, leaders, scorer=_similarity, score_cutoff=similarity)
        if best is None:
            leaders.append(key)
            groups.append(QuestionGroup())
            members.append([])
            index = len(groups) - 1
        else:
            index = best[2]
        groups[index].count += count
        members[index].append((count, original[key].most_common(1)[0][0]))
    for group, found in zip(groups, members, strict=True):
        found.sort(key=lambda item: (-item[0], len(item[1])))
        group.questions = [text for _, text in found]
    order = sorted(range(len(groups)), key=lambda i: (-groups[i].count, i))
    return [groups[i] for i in order]


def slugify(text: str, *, max_words: int = 6) -> str:
    """An entry id from a question: lowercase ASCII words joined by '_' ("" if none)."""
    words = re.findall(r"[a-z0-9]+", normalize(text).replace("qorderq", "order"))
    words = [w for w in words if w not in ("qnumq",)]
    return "_".join(words[:max_words])


def render_yaml(groups: Sequence[QuestionGroup], *, languages: Sequence[str] = ("en", "it", "th")
                ) -> str:
    """Draft FAQ YAML: one entry per group, answers set to TODO in every language.

    Every entry is marked `draft: true`: copied into the FAQ folder as it is, the loader keeps
    it out of the served FAQ (and `faq lint` says why) until the owner writes the answers and
    removes the mark, so customers never get the word "TODO".
    """
    used: set[str] = set()
    chunks: list[str] = []
    for number, group in enumerate(groups, start=1):
        base = slugify(group.representative) or f"question_{number}"
        entry_id, suffix = base, 2
        while entry_id in used:
            entry_id, suffix = f"{base}_{suffix}", suffix + 1
        used.add(entry_id)
        asked_in = detect_language(group.representative)
        answer = {lang: TODO for lang in dict.fromkeys([asked_in, *languages])}
        entry = {
            "id": entry_id,
            "questions": group.questions[:MAX_PHRASINGS_PER_ENTRY],
            "answer": answer,
            "draft": True,
        }
        body = yaml.safe_dump([entry], allow_unicode=True, sort_keys=False, width=100)
        chunks.append(f"# asked {group.count} time{'s' if group.count != 1 else ''}\n{body}")
    return "\n".join(chunks)

"""Read and check FAQ files: a directory of YAML lists of entries.

Files are composed to YAML *nodes* before being turned into Python values, so every entry and
every field still knows its line: a shop owner who breaks a file is told
`faq/returns.yaml:42: entry 'refunds': unknown key 'anwser' (did you mean 'answer'?)`,
not a traceback.

`load_faq_dir` stops at the first error (what the service needs); `lint_faq_dir` reports every
error plus warnings (near-duplicate phrasings across entries, missing languages, phrasings in
one language only or fewer than three).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from rapidfuzz import fuzz, process

from core.errors import FaqLoadError
from faq.language import detect_language
from faq.models import KINDS, STAGES, FaqEntry, Kind
from faq.normalize import normalize

KNOWN_KEYS = ("id", "questions", "answer", "answer_with_order", "stage", "tags", "escalate",
              "negatives", "kind", "draft")
#: answers that mean "not written yet" (what `faq suggest` puts in its drafts)
PLACEHOLDERS = frozenset({"todo", "tbd", "fixme", "xxx", "..."})
REQUIRED_LANGUAGES = ("en", "it", "th")
#: fewer phrasings than this and an entry is rarely matched with confidence (lint warns)
MIN_PHRASINGS = 3
NEAR_DUPLICATE_RATIO = 90.0
_ID = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_LANG = re.compile(r"^(default|[a-z]{2,3}(-[A-Za-z]{2,4})?)$")


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in an FAQ directory; errors stop a load, warnings do not."""

    path: str
    line: int | None
    message: str
    level: Literal["error", "warning"] = "error"
    #: False for an error that only keeps its entry out of the served FAQ (a draft)
    blocks_load: bool = True

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.level}: {self.message}"


@dataclass(slots=True)
class _FileResult:
    entries: list[FaqEntry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def faq_files(path: Path) -> list[Path]:
    """The FAQ files of a directory, sorted so that loading is deterministic."""
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_faq_dir(path: Path) -> list[FaqEntry]:
    """Every entry of every `*.yaml`/`*.yml` file in `path`.

    Raises:
        FaqLoadError: for the first error found (file, line, problem).
    """
    entries, problems = _load(Path(path))
    for problem in problems:
        if problem.level == "error" and problem.blocks_load:
            raise FaqLoadError(problem.path, problem.line, problem.message)
    return entries


def lint_faq_dir(path: Path) -> list[Problem]:
    """All errors and warnings of an FAQ directory, in file order."""
    entries, problems = _load(Path(path))
    problems.extend(_near_duplicates(entries))
    problems.extend(_missing_languages(entries))
    return problems


def lint_faq_file(path: Path) -> list[Problem]:
    """The errors and warnings of one FAQ file on its own (e.g. the desk's drafts file)."""
    result = _parse_file(Path(path))
    return result.problems + list(_missing_languages(result.entries))


def _load(path: Path) -> tuple[list[FaqEntry], list[Problem]]:
    if not path.is_dir():
        return [], [Problem(str(path), None, "FAQ directory not found")]
    files = faq_files(path)
    if not files:
        return [], [Problem(str(path), None, "no *.yaml or *.yml files in the FAQ directory")]
    entries: list[FaqEntry] = []
    problems: list[Problem] = []
    first_seen: dict[str, FaqEntry] = {}
    for file in files:
        result = _parse_file(file)
        problems.extend(result.problems)
        for entry in result.entries:
            earlier = first_seen.get(entry.id)
            if earlier is not None:
                problems.append(
                    Problem(
                        entry.source,
                        entry.line,
                        f"duplicate id {entry.id!r}: first defined at "
                        f"{earlier.source}:{earlier.line}",
                    )
                )
                continue
            first_seen[entry.id] = entry
            entries.append(entry)
    return entries, problems


def _parse_file(file: Path) -> _FileResult:
    result = _FileResult()
    name = str(file)
    try:
        root = yaml.compose(file.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        message = f"YAML syntax error: {error.problem}"
        if error.context and error.context_mark and error.context_mark.line + 1 != line:
            message += f" ({error.context} started at line {error.context_mark.line + 1})"
        result.problems.append(Problem(name, line, message))
        return result
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        result.problems.append(Problem(name, None, f"cannot read file: {error}"))
        return result
    if root is None:
        return result  # an empty file is an empty FAQ
    if not isinstance(root, yaml.SequenceNode):
        result.problems.append(
            Problem(name, _line(root), "the file must be a YAML list of entries ('- id: ...')")
        )
        return result
    for item in root.value:
        entry = _parse_entry(name, item, result.problems)
        if entry is not None:
            result.entries.append(entry)
    return result


def _parse_entry(name: str, node: yaml.Node, problems: list[Problem]) -> FaqEntry | None:
    """One entry from its mapping node; appends problems and returns None if it is unusable."""
    line = _line(node)
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(name, line, "each entry must be a mapping (id, questions, ...)"))
        return None
    fields: dict[str, yaml.Node] = {}
    unknown: list[tuple[str | None, yaml.Node]] = []
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key in KNOWN_KEYS:
            fields[key] = value_node
        else:
            unknown.append((key, key_node))
    before = len(problems)
    entry_id = _scalar_str(name, fields.get("id"), "id", line, problems)
    label = f"entry {entry_id!r}" if entry_id else "entry"
    for key, key_node in unknown:
        hint = process.extractOne(str(key), KNOWN_KEYS, score_cutoff=70)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.append(
            Problem(name, _line(key_node), f"{label}: unknown key {key!r}{suggestion}; "
                    f"allowed: {', '.join(KNOWN_KEYS)}")
        )
    if entry_id and not _ID.match(entry_id):
        problems.append(Problem(name, _line(fields["id"]),
                                f"{label}: id must be lowercase letters, digits, '_' or '-'"))
    questions = _string_list(name, fields.get("questions"), f"{label}: questions", line,
                             problems, required=True)
    kind = _kind(name, fields.get("kind"), label, problems)
    order_answers = (_answers(name, fields["answer_with_order"], f"{label}: answer_with_order",
                              line, problems) if "answer_with_order" in fields else {})
    answers = ({} if kind == "small_talk" and "answer" not in fields
               else _answers(name, fields.get("answer"), label, line, problems))
    stage = _stage(name, fields.get("stage"), label, problems)
    tags = _string_list(name, fields.get("tags"), f"{label}: tags", line, problems)
    negatives = _string_list(name, fields.get("negatives"), f"{label}: negatives", line, problems)
    escalate = _bool(name, fields.get("escalate"), f"{label}: escalate", problems)
    if _bool(name, fields.get("draft"), f"{label}: draft", problems):
        problems.append(Problem(
            name, line, f"{label} is a draft (from `faq suggest`): it is not served until its "
            "answers are written and `draft: true` is removed", blocks_load=False))
        return None
    for lang, text in answers.items():
        if text.strip().lower() in PLACEHOLDERS:
            problems.append(Problem(name, _line(fields.get("answer")),
                                    f"{label}: the {lang!r} answer is the placeholder {text!r}; "
                                    "write the answer customers should get"))
    if len(problems) > before or entry_id is None:
        return None
    return FaqEntry(
        id=entry_id,
        questions=tuple(questions),
        answers=answers,
        stage=stage,
        tags=tuple(tags),
        escalate=escalate,
        negatives=tuple(negatives),
        kind=kind,
        order_answers=order_answers,
        source=name,
        line=line or 0,
    )


def _line(node: yaml.Node | None) -> int | None:
    return node.start_mark.line + 1 if node is not None else None


def _scalar_str(
    name: str, node: yaml.Node | None, what: str, entry_line: int | None, problems: list[Problem]
) -> str | None:
    if node is None:
        problems.append(Problem(name, entry_line, f"entry without {what!r}"))
        return None
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        problems.append(Problem(name, _line(node), f"{what!r} must be a non-empty text"))
        return None
    return str(node.value).strip()


def _string_list(
    name: str,
    node: yaml.Node | None,
    what: str,
    entry_line: int | None,
    problems: list[Problem],
    *,
    required: bool = False,
) -> list[str]:
    if node is None:
        if required:
            problems.append(Problem(name, entry_line, f"{what}: missing (a list of texts)"))
        return []
    if not isinstance(node, yaml.SequenceNode):
        problems.append(Problem(name, _line(node), f"{what}: must be a list of texts"))
        return []
    values: list[str] = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or not str(item.value).strip():
            problems.append(Problem(name, _line(item), f"{what}: items must be non-empty texts"))
            continue
        values.append(str(item.value).strip())
    if required and not values and isinstance(node, yaml.SequenceNode) and not node.value:
        problems.append(Problem(name, _line(node), f"{what}: the list is empty"))
    return values


def _answers(
    name: str, node: yaml.Node | None, label: str, entry_line: int | None, problems: list[Problem]
) -> dict[str, str]:
    if node is None:
        problems.append(Problem(name, entry_line, f"{label}: missing 'answer'"))
        return {}
    if isinstance(node, yaml.ScalarNode):
        if not str(node.value).strip():
            problems.append(Problem(name, _line(node), f"{label}: 'answer' is empty"))
            return {}
        return {"default": str(node.value).strip()}
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(name, _line(node),
                                f"{label}: 'answer' must be a text or a mapping language: text"))
        return {}
    answers: dict[str, str] = {}
    for key_node, value_node in node.value:
        lang = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
        if not _LANG.match(lang):
            problems.append(Problem(name, _line(key_node),
                                    f"{label}: answer language {lang!r} is not a code (en/it/th)"))
            continue
        if not isinstance(value_node, yaml.ScalarNode) or not str(value_node.value).strip():
            problems.append(Problem(name, _line(value_node),
                                    f"{label}: answer in {lang!r} must be a non-empty text"))
            continue
        answers[lang] = str(value_node.value).strip()
    if not answers and not node.value:
        problems.append(Problem(name, _line(node), f"{label}: 'answer' has no language"))
    return answers


def _stage(name: str, node: yaml.Node | None, label: str, problems: list[Problem]) -> str | None:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return None
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    if value not in STAGES:
        problems.append(Problem(name, _line(node),
                                f"{label}: stage {value!r} is not one of {', '.join(STAGES)}"))
        return None
    return str(value)


def _kind(name: str, node: yaml.Node | None, label: str, problems: list[Problem]) -> Kind:
    """`answer` (the default) or `small_talk`: greetings, thanks... answered, never escalated."""
    if node is None:
        return "answer"
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    for kind in KINDS:
        if value == kind:
            return kind
    problems.append(Problem(name, _line(node),
                            f"{label}: kind {value!r} is not one of {', '.join(KINDS)}"))
    return "answer"


def _bool(name: str, node: yaml.Node | None, what: str, problems: list[Problem]) -> bool:
    if node is None:
        return False
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":bool"):
        return bool(yaml.safe_load(node.value))
    problems.append(Problem(name, _line(node), f"{what}: must be true or false"))
    return False


def _near_duplicates(entries: list[FaqEntry]) -> Iterator[Problem]:
    """The same or nearly the same phrasing under two entries makes matching a coin toss.

    Compared in blocks of rows so a very large FAQ does not need an n x n matrix at once.
    """
    phrasings = [(entry, q) for entry in entries for q in entry.questions]
    texts = [normalize(q) for _, q in phrasings]
    block = 1000
    for top in range(0, len(texts), block):
        scores = process.cdist(texts[top : top + block], texts, scorer=fuzz.ratio,
                               score_cutoff=NEAR_DUPLICATE_RATIO, dtype="uint8", workers=-1)
        for row, col in zip(*scores.nonzero(), strict=True):
            i, j = top + int(row), int(col)
            (first, first_q), (second, second_q) = phrasings[i], phrasings[j]
            if j <= i or first.id == second.id:
                continue
            yield Problem(
                second.source, second.line,
                f"entry {second.id!r}: phrasing {second_q!r} is {int(scores[row, col])}% like "
                f"{first_q!r} of entry {first.id!r} ({first.source}:{first.line})",
                "warning",
            )


def _missing_languages(entries: list[FaqEntry]) -> Iterator[Problem]:
    """Entries whose answer or phrasings lack one of the FAQ's languages."""
    for entry in entries:
        if entry.answers and "default" not in entry.answers:
            missing = [lang for lang in REQUIRED_LANGUAGES if lang not in entry.answers]
            if missing:
                yield Problem(entry.source, entry.line,
                              f"entry {entry.id!r}: answer has no {'/'.join(missing)} text",
                              "warning")
        asked = {detect_language(q) for q in entry.questions}
        missing_q = [lang for lang in REQUIRED_LANGUAGES if lang not in asked]
        if len(asked) == 1 and len(REQUIRED_LANGUAGES) > 1:
            (only,) = asked
            yield Problem(entry.source, entry.line,
                          f"entry {entry.id!r}: phrasings in {only} only; questions in "
                          f"{'/'.join(missing_q)} reach it only through the store-word table "
                          "and are handed over more often: add a phrasing in each", "warning")
        elif missing_q:
            yield Problem(entry.source, entry.line,
                          f"entry {entry.id!r}: no phrasing in {'/'.join(missing_q)}", "warning")
        if len(entry.questions) < MIN_PHRASINGS and entry.kind == "answer":
            yield Problem(entry.source, entry.line,
                          f"entry {entry.id!r}: only {len(entry.questions)} phrasing(s); with "
                          f"fewer than {MIN_PHRASINGS} most questions score under the threshold"
                          " and are handed over: add the ways customers ask it", "warning")


def iter_entries_with_files(path: Path) -> Iterator[tuple[Path, Any]]:
    """(file, raw YAML value) pairs, for tools that want the plain data."""
    for file in faq_files(path):
        yield file, yaml.safe_load(file.read_text(encoding="utf-8"))

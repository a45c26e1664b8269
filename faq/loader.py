"""Read FAQ YAML files into entries, with errors that name the file, the line and the problem.

Files are composed to YAML nodes first, so every entry and field still knows its line number
when we validate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bot.errors import FaqLoadError
from faq.models import STAGES, FaqEntry

ENTRY_KEYS = {"id", "questions", "answer", "stage", "tags", "escalate", "negatives"}


def faq_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("."))


def load_faq_dir(directory: Path) -> list[FaqEntry]:
    """All entries of all YAML files in `directory` (sorted by file name)."""
    if not directory.is_dir():
        raise FaqLoadError(str(directory), None, "not a directory")
    entries: list[FaqEntry] = []
    seen: dict[str, FaqEntry] = {}
    files = faq_files(directory)
    if not files:
        raise FaqLoadError(str(directory), None, "no .yaml files in the FAQ directory")
    for path in files:
        for entry in load_faq_file(path):
            if entry.id in seen:
                first = seen[entry.id]
                raise FaqLoadError(str(path), entry.line, f"duplicate id {entry.id!r} "
                                   f"(first defined at {first.source}:{first.line})")
            seen[entry.id] = entry
            entries.append(entry)
    return entries


def load_faq_file(path: Path) -> list[FaqEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FaqLoadError(str(path), None, f"cannot read file: {exc}") from None
    try:
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise FaqLoadError(str(path), line, f"YAML syntax error: {exc.problem}") from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise FaqLoadError(str(path), _line(root), "the file must be a list of entries")
    return [_entry(path, node) for node in root.value]


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _scalar(path: Path, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise FaqLoadError(str(path), _line(node), f"{what} must be a non-empty string")
    return str(node.value).strip()


def _string_list(path: Path, node: yaml.Node, what: str, *, required: bool) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise FaqLoadError(str(path), _line(node), f"{what} must be a list of strings")
    items = tuple(_scalar(path, item, f"each of {what}") for item in node.value)
    if required and not items:
        raise FaqLoadError(str(path), _line(node), f"{what} must not be empty")
    return items


def _entry(path: Path, node: yaml.Node) -> FaqEntry:
    if not isinstance(node, yaml.MappingNode):
        raise FaqLoadError(str(path), _line(node), "each entry must be a mapping with id, "
                                                    "questions and answer")
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        if key not in ENTRY_KEYS:
            raise FaqLoadError(str(path), _line(key_node), f"unknown key {key!r} "
                               f"(allowed: {', '.join(sorted(ENTRY_KEYS))})")
        fields[key] = value_node
    for required in ("id", "questions", "answer"):
        if required not in fields:
            raise FaqLoadError(str(path), _line(node), f"entry is missing {required!r}")
    entry_id = _scalar(path, fields["id"], "id")
    answers = _answers(path, fields["answer"])
    stage: str | None = None
    if "stage" in fields:
        stage_value = yaml.safe_load(yaml.serialize(fields["stage"]))
        if stage_value is not None:
            if stage_value not in STAGES:
                raise FaqLoadError(str(path), _line(fields["stage"]),
                                   f"stage must be one of {', '.join(STAGES)}, got {stage_value!r}")
            stage = str(stage_value)
    escalate = False
    if "escalate" in fields:
        value: Any = yaml.safe_load(yaml.serialize(fields["escalate"]))
        if not isinstance(value, bool):
            raise FaqLoadError(str(path), _line(fields["escalate"]), "escalate must be true/false")
        escalate = value
    return FaqEntry(
        id=entry_id,
        questions=_string_list(path, fields["questions"], "questions", required=True),
        answers=answers, stage=stage,
        tags=_string_list(path, fields["tags"], "tags", required=False) if "tags" in fields
        else (),
        escalate=escalate,
        negatives=_string_list(path, fields["negatives"], "negatives", required=False)
        if "negatives" in fields else (),
        source=str(path), line=_line(node),
    )


def _answers(path: Path, node: yaml.Node) -> dict[str, str]:
    if isinstance(node, yaml.ScalarNode):
        return {"default": _scalar(path, node, "answer")}
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise FaqLoadError(str(path), _line(node),
                           "answer must be a string or a mapping language -> string")
    answers: dict[str, str] = {}
    for key_node, value_node in node.value:
        lang = str(key_node.value).strip()
        if not lang or len(lang) > 8:
            raise FaqLoadError(str(path), _line(key_node), f"bad language code {lang!r}")
        answers[lang] = _scalar(path, value_node, f"answer in {lang!r}")
    return answers

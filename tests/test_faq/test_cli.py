"""The `faq` command line through a real process, as the lead's service and scripts use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from faq.cli import app

from .conftest import REPO_ROOT


def run_process(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The real command in a child process (slow to start: used for the stdin/stdout contract)."""
    return subprocess.run(
        [sys.executable, "-m", "faq.cli", *args],
        input=stdin, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The same command in-process, for the checks that do not need a real pipe."""
    result = CliRunner().invoke(app, list(args), input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_match_jsonl_contract() -> None:
    questions = ["Where is my order?", "voglio parlare con un operatore",
                 "what's the weather in Rome?", "Quanto costa la spedizione?"]
    stdin = "".join(json.dumps({"text": q}) + "\n" for q in questions)
    done = run_process("match", "--jsonl", stdin=stdin)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == len(questions)
    for record in records:
        assert {"faq_id", "score", "decision"} <= set(record)
        assert record["decision"] in ("answer", "escalate")
        assert isinstance(record["score"], float) and 0.0 <= record["score"] <= 1.0
    assert records[0]["faq_id"] == "order_tracking" and records[0]["decision"] == "answer"
    assert records[1]["faq_id"] == "talk_to_human" and records[1]["decision"] == "escalate"
    assert records[2]["faq_id"] is None and records[2]["decision"] == "escalate"
    assert records[3]["faq_id"] == "shipping_costs"


def test_match_jsonl_bad_line_keeps_the_order() -> None:
    done = run_cli("match", "--jsonl", stdin='{"text": "refund?"}\nnot json\n{"txt": 1}\n')
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 3
    assert records[1]["faq_id"] is None and "error" in records[1]
    assert "line 2" in done.stderr and "Traceback" not in done.stderr


def test_match_one_question_prints_a_table() -> None:
    done = run_cli("match", "posso pagare con paypal?")
    assert done.returncode == 0
    assert "payment_methods" in done.stdout and "decision: answer" in done.stdout


def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("- id: x\n  questions: [a]\n  anwser: b\n")
    for args in (("match", "--faq-dir", str(tmp_path), "hi"),
                 ("match", "--faq-dir", str(tmp_path / "missing"), "hi"),
                 ("lint", str(tmp_path)),
                 ("eval", str(tmp_path / "no-such-file.jsonl"))):
        done = run_cli(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr + done.stdout
    lint = run_cli("lint", str(tmp_path))
    assert "bad.yaml:3: error: entry 'x': unknown key 'anwser'" in lint.stdout


def test_eval_reports_accuracy_and_confusions(tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    rows = [("Where is my order?", "order_tracking"),
            ("quanto costa la spedizione", "shipping_costs"),
            ("how do I cancel my order", "cancel_order"), ("weather in Rome?", None)]
    cases.write_text("".join(json.dumps({"text": t, "expected": e}) + "\n" for t, e in rows))
    done = run_cli("eval", str(cases))
    assert done.returncode == 0, done.stderr
    assert "top-1 accuracy" in done.stdout and "1.000" in done.stdout
    assert "best threshold" in done.stdout


def test_explain_and_suggest(tmp_path: Path) -> None:
    explain = run_cli("explain", "Posso pagare con PayPal?")
    assert explain.returncode == 0 and "payment_methods" in explain.stdout
    assert "centroid" in explain.stdout and "coverage" in explain.stdout
    questions = tmp_path / "q.txt"
    questions.write_text("do you ship to Canada?\nDo you ship to canada\ncan I pay in bitcoin\n")
    out = tmp_path / "draft.yaml"
    done = run_cli("suggest", "--from-file", str(questions), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "id: do_you_ship_to_canada" in out.read_text()

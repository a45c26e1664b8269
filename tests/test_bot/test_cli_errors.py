"""The mistakes a newcomer makes most get one line saying what to fix, exit code 2, and no
traceback (LOG_LEVEL=DEBUG shows it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PG = "postgresql+asyncpg://{auth}@127.0.0.1:{port}/{db}"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("DATABASE_", "REDIS_", "PORT", "HOST", "LOG_LEVEL"))}
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(ROOT), **env})


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def test_a_sqlite_file_in_a_missing_folder(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nowhere' / 'storedesk.db'}"
    for command in (("serve",), ("escalations",), ("db", "upgrade")):
        line = one_line_error(run(*command, DATABASE_URL=url))
        assert f"the folder {tmp_path / 'nowhere'} does not exist" in line


@pytest.mark.postgres
def test_postgresql_credentials_database_and_address(pg_database_url: str) -> None:
    line = one_line_error(run("escalations", DATABASE_URL=PG.format(
        auth="nobody:wrong", port=5432, db="postgres")))
    assert "refused user nobody" in line and "DATABASE_URL" in line
    line = one_line_error(run("escalations", DATABASE_URL=PG.format(
        auth="postgres", port=5432, db="no_such_storedesk_db")))
    assert "no database 'no_such_storedesk_db'" in line
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    line = one_line_error(run("escalations", DATABASE_URL=PG.format(
        auth="postgres", port=port, db="postgres")))
    assert f"cannot reach PostgreSQL at 127.0.0.1:{port}" in line


@pytest.mark.postgres
@pytest.mark.redis
def test_redis_that_is_not_there(pg_database_url: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    line = one_line_error(run("serve", DATABASE_URL=pg_database_url,
                              REDIS_URL=f"redis://127.0.0.1:{port}/0", PORT="0"))
    assert f"cannot reach Redis at 127.0.0.1:{port}" in line and "REDIS_URL" in line


def test_a_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run("serve", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/s.db",
                                  HOST="127.0.0.1", PORT=str(port)))
    assert "address already in use" in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'nowhere' / 'storedesk.db'}"
    done = run("escalations", DATABASE_URL=url, LOG_LEVEL="DEBUG")
    assert done.returncode != 0 and "OperationalError" in done.stderr


def test_queue_reports_every_queue_and_refuses_an_unknown_one_to_requeue(
        tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'q.db'}"
    done = run("queue", "--requeue-failed", "outbox", DATABASE_URL=url)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert set(report["queues"]) == {"inbox", "outbox", "desk", "playbooks"}
    assert report["queues"]["outbox"] == {"pending": 0, "sent": 0, "failed": 0}
    assert report["requeued_failed"] == {"outbox": 0}
    assert one_line_error(run("queue", "--requeue-failed", "playbooks", DATABASE_URL=url)) \
        == "error: --requeue-failed must be one of outbox, desk, not 'playbooks'"

"""The deployment files are valid: compose config renders, Kubernetes manifests pass their
schemas, the FAQ shipped in the ConfigMap loads, the Dockerfile runs as non-root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from faq.loader import lint_faq_dir, load_faq_dir
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _compose() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_renders_with_web_two_workers_postgres_and_redis(tmp_path: Path) -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed "
                    "(apt-get install docker-compose)")
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=secret\nADMIN_TOKEN=0123456789abcdef0\n")
    shutil.copy(DEPLOY / "docker-compose.yml", tmp_path / "docker-compose.yml")
    result = subprocess.run([*compose, "-f", str(tmp_path / "docker-compose.yml"),
                             "--project-directory", str(tmp_path), "config"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "FAQ_HOST_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"web", "worker", "postgres", "redis", "migrate"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    for name in ("web", "worker", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("web", "worker"):
        env_vars = services[name]["environment"]
        assert env_vars["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env_vars["REDIS_URL"] == "redis://redis:6379/0"
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1]  # v2 / v1 format
                   for v in services[name]["volumes"]]
        assert "/faq" in targets
    assert services["web"]["command"] == ["web"] and services["worker"]["command"] == ["worker"]


def test_compose_refuses_to_start_without_a_database_password(tmp_path: Path) -> None:
    compose = _compose()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    (tmp_path / ".env").write_text("ADMIN_TOKEN=0123456789abcdef0\n")
    shutil.copy(DEPLOY / "docker-compose.yml", tmp_path / "docker-compose.yml")
    result = subprocess.run([*compose, "-f", str(tmp_path / "docker-compose.yml"),
                             "--project-directory", str(tmp_path), "config"],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


@pytest.mark.parametrize("manifest", K8S, ids=[p.name for p in K8S])
def test_kubernetes_manifests_pass_the_schema(manifest: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="pip install kubernetes-validate (offline schemas)")
    for doc in yaml.safe_load_all(manifest.read_text()):
        kv.validate(doc, "1.30.0", strict=True)


def test_kubernetes_set_has_web_worker_service_hpa_configmap_and_secret() -> None:
    kinds = [(d["kind"], d["metadata"]["name"]) for p in K8S
             for d in yaml.safe_load_all(p.read_text())]
    assert ("Deployment", "storedesk-web") in kinds
    assert ("Deployment", "storedesk-worker") in kinds
    assert ("Service", "storedesk-web") in kinds
    assert ("HorizontalPodAutoscaler", "storedesk-worker") in kinds
    assert ("ConfigMap", "storedesk-faq") in kinds and ("Secret", "storedesk-secrets") in kinds
    for p in K8S:
        for d in yaml.safe_load_all(p.read_text()):
            if d["kind"] == "Deployment":
                pod = d["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True
                assert all(c["readinessProbe"] for c in pod["containers"])


def test_the_faq_in_the_configmap_loads(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "configmap.yaml").read_text()))
    faq = next(d for d in docs if d["metadata"]["name"] == "storedesk-faq")
    for name, body in faq["data"].items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    assert [p for p in lint_faq_dir(tmp_path) if p.level == "error"] == []
    assert [e.id for e in load_faq_dir(tmp_path)] == ["shipping_cost"]


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "AS build" in text and "COPY --from=build" in text
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["python", "-m", "bot"]' in text


def test_systemd_unit_runs_a_role_and_stops_with_sigterm() -> None:
    unit = (DEPLOY / "storedesk.service").read_text()
    assert "ExecStart=/opt/storedesk/venv/bin/python -m bot ${ROLE}" in unit
    assert "KillSignal=SIGTERM" in unit and "User=storedesk" in unit

"""docker/compose.yaml cannot run here (no Docker engine): check its structure so it stays runnable."""

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|TOKEN", re.I)


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_services_healthchecks_ports_volumes_and_order():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow", "trainer"}
    for name in ("postgres", "minio", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "minio-init": {"condition": "service_completed_successfully"}}
    assert services["trainer"]["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert any(p.endswith(":5000") for p in services["mlflow"]["ports"])
    assert any(p.endswith(":9000") for p in services["minio"]["ports"])
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert named <= set(spec["volumes"])
    for service in services.values():
        if "build" in service:
            assert (DOCKER.parent / service["build"]["dockerfile"]).is_file()


def test_server_runs_on_postgres_with_s3_artifacts_and_basic_auth():
    env = compose()["services"]["mlflow"]["environment"]
    assert env["BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["ARTIFACTS_DESTINATION"].startswith("s3://")
    script = (DOCKER / "server-entrypoint.sh").read_text()
    for flag in ("--backend-store-uri", "--artifacts-destination", "--app-name basic-auth", "--allowed-hosts"):
        assert flag in script
    assert "mlflow[auth]" in (DOCKER / "Dockerfile.server").read_text()


def test_every_variable_is_documented_and_no_secret_is_committed():
    text = (DOCKER / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert used <= set(example), used - set(example)
    for key, value in example.items():
        if SECRET_KEYS.search(key):
            assert value.startswith("change-me"), f"{key} in .env.example must be a placeholder"
    for service in compose()["services"].values():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEYS.search(key):
                assert str(value).startswith("${"), f"{key} must come from the env file"
    assert "docker/.env" in (DOCKER.parent / ".gitignore").read_text().split()

"""docker-compose.yml: valid for Compose, and shaped as the deployment needs.

Running the file needs a Docker engine, but ``config`` does not: it is checked with every
Compose found here (``docker compose``, v2, and ``docker-compose``, v1) and skips with the
reason where there is none. The structural checks read the file with PyYAML and skip when it
is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
LONG_RUNNING = ("kafka", "postgres", "ingest", "scheduler", "api")
RESTARTING = ("always", "unless-stopped", "on-failure")


def _compose_v2() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return ["docker", "compose"] if probe.returncode == 0 else None


def _compose_v1() -> list[str] | None:
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("find", [_compose_v2, _compose_v1], ids=["docker-compose-v2",
                                                                  "docker-compose-v1"])
def test_compose_config_is_valid(find) -> None:  # type: ignore[no-untyped-def]
    command = find()
    if command is None:
        pytest.skip({
            _compose_v2: "`docker compose` (the Compose v2 plugin) is not installed here",
            _compose_v1: "`docker-compose` (Compose v1; Debian: apt-get install docker-compose) "
                         "is not installed here",
        }[find] + "; either checks docker-compose.yml without a Docker engine")
    done = subprocess.run([*command, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"`{' '.join(command)} config -q` rejects docker-compose.yml:\n{done.stderr}{done.stdout}"
    )


# ------------------------------------------------------------------ structure (PyYAML)
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed, so docker-compose.yml's structure is not "
        "checked here (`pip install pyyaml` enables it)")
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services", {})
    assert name in services, f"docker-compose.yml has no '{name}' service: {sorted(services)}"
    return services[name]


def _condition(service: dict[str, Any], dependency: str) -> str | None:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):  # short form: started, no condition
        return "service_started" if dependency in depends else None
    return (depends.get(dependency) or {}).get("condition")


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source of the service's ``volumes`` (short ``src:dst`` form)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        out[target] = source
    return out


def test_kafka_is_kraft_without_topic_auto_creation(compose: dict[str, Any]) -> None:
    env = _service(compose, "kafka")["environment"]
    assert "controller" in str(env["KAFKA_PROCESS_ROLES"])
    assert "zookeeper" not in compose["services"]
    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"


def test_kafka_keeps_its_log_in_the_volume(compose: dict[str, Any]) -> None:
    kafka = _service(compose, "kafka")
    mounts = _volume_targets(kafka)
    log_dir = str(kafka["environment"].get("KAFKA_LOG_DIRS"))
    assert log_dir in mounts, f"KAFKA_LOG_DIRS={log_dir} is not a mounted volume: {mounts}"
    assert mounts[log_dir] in compose.get("volumes", {})


def test_topic_init_is_a_one_shot_that_ingest_waits_for(compose: dict[str, Any]) -> None:
    init = _service(compose, "kafka-init")
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    assert "kafka-topics.sh" in script and "--create" in script and "--topic events" in script
    assert str(init.get("restart", "no")) == "no"
    assert _condition(init, "kafka") == "service_healthy"
    assert _condition(_service(compose, "ingest"), "kafka-init") == (
        "service_completed_successfully")


def test_postgres_data_lives_in_a_named_volume(compose: dict[str, Any]) -> None:
    mounts = _volume_targets(_service(compose, "postgres"))
    source = mounts.get("/var/lib/postgresql/data")
    assert source in compose.get("volumes", {}), f"postgres data is not in a named volume: {mounts}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart(compose: dict[str, Any], name: str) -> None:
    assert str(_service(compose, name).get("restart")) in RESTARTING


@pytest.mark.parametrize("name", ["kafka", "postgres", "api"])
def test_serving_services_have_healthchecks(compose: dict[str, Any], name: str) -> None:
    check = _service(compose, name).get("healthcheck", {})
    assert check.get("test"), f"'{name}' has no healthcheck"


@pytest.mark.parametrize("name", ["ingest", "scheduler", "api"])
def test_streamrec_services_wait_for_postgres_and_share_settings(
    compose: dict[str, Any], name: str
) -> None:
    service = _service(compose, name)
    assert _condition(service, "postgres") == "service_healthy"
    env = service["environment"]
    assert str(env["STREAMREC_STORE"]).startswith("postgresql://")
    assert env["STREAMREC_BOOTSTRAP"] == "kafka:9092"
    assert service["command"][:2] == ["streamrec", {"ingest": "ingest", "scheduler": "schedule",
                                                    "api": "serve"}[name]]


def test_no_retrain_token_ships_with_the_file() -> None:
    """POST /retrain is enabled only by a token the operator sets: no default anywhere."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert "change-me" not in text
    assert "${STREAMREC_RETRAIN_TOKEN:-}" in text or "${STREAMREC_RETRAIN_TOKEN}" in text, (
        "the api service must take STREAMREC_RETRAIN_TOKEN from the operator's environment")


def test_api_token_is_the_operators_own(compose: dict[str, Any]) -> None:
    env = _service(compose, "api")["environment"]
    assert str(env.get("STREAMREC_RETRAIN_TOKEN", "")).strip() in (
        "${STREAMREC_RETRAIN_TOKEN:-}", "${STREAMREC_RETRAIN_TOKEN}")


def _host_ports(entry: Any) -> tuple[int, int] | None:
    """(first, last) host port of a ``ports`` entry published on a fixed host port range, or
    None when Docker picks the host port. Variables are read at their defaults."""
    import re

    if isinstance(entry, dict):  # long syntax
        published = entry.get("published")
        spec = None if published is None else f"{published}:{entry.get('target')}"
    else:
        spec = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(entry))
    if spec is None or ":" not in spec:
        return None
    host = spec.rsplit(":", 1)[0].rsplit(":", 1)[-1]  # drop an "ip:" prefix
    lo, _, hi = host.partition("-")
    return int(lo), int(hi or lo)


def test_api_scales_without_host_port_clashes(compose: dict[str, Any]) -> None:
    """`docker compose up --scale api=2` needs a host port per replica: none fixed, or a
    range of at least two."""
    api = _service(compose, "api")
    assert "container_name" not in api, "a fixed container_name cannot be scaled"
    for entry in api.get("ports", []):
        ports = _host_ports(entry)
        assert ports is None or ports[1] - ports[0] >= 1, (
            f"api publishes one fixed host port ({entry!r}): a second replica clashes; "
            "publish a range ('8000-8009:8000') or let Docker choose ('8000')")

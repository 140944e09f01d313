"""Settings, node parsing, and the packaging files agreeing with them. The nginx and
monitoring files are run by their real binaries instead (tests/test_nginx.py,
tests/test_monitoring.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app.core.config import Settings, SettingsError, load_settings
from app.core.http_protocol import PROTOCOL
from app.core.nodes import parse_nodes, redact_url
from tests.local_nginx import shipped_upstreams

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_final_stage() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [(n.label, n.url) for n in settings.nodes] == [
        ("redis_7000", "redis://127.0.0.1:7000"),
        ("redis_7001", "redis://127.0.0.1:7001"),
    ]
    assert settings.virtual_nodes == 100
    assert settings.batch_interval_seconds == 10
    assert settings.cache_ttl_seconds == 5
    assert settings.api_prefix == "/api/v1"


def test_node_labels() -> None:
    assert [n.label for n in parse_nodes("redis://h:6379")] == ["redis"]
    assert [n.label for n in parse_nodes("redis://a:7000, redis://b:7001")] == [
        "redis_7000",
        "redis_7001",
    ]
    assert [n.label for n in parse_nodes("x=redis://a:6379,y=rediss://b:6379")] == ["x", "y"]
    assert parse_nodes("") == []


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [
        ("redis_nodes", "http://h:1", "redis://"),
        ("redis_nodes", "redis://a:6379,redis://b:6379", "unique"),
        ("redis_nodes", "bad label=redis://a:1", "label"),
        ("redis_nodes", "redis://h:notaport", "port"),
        ("virtual_nodes", "0", "greater"),
        ("batch_interval_seconds", "-1", "greater"),
        ("cache_ttl_seconds", "soon", "number"),
        ("api_prefix", "api", "start with"),
        ("journal_fsync", "sometimes", "always"),
    ],
)
def test_bad_value_names_the_setting(
    name: str, value: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name.upper(), value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert name.upper() in str(error.value)
    assert hint in str(error.value)


def test_passwords_are_redacted() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("rediss://:pw@h:1") == "rediss://:***@h:1"
    assert redact_url("redis://h:1") == "redis://h:1"
    with pytest.raises(ValueError) as error:
        parse_nodes("http://:pw@h:1")
    assert "pw" not in str(error.value).replace("***", "")


@pytest.mark.parametrize(
    ("entry", "label", "url", "safe_url"),
    [
        ("redis://:pa#s/s@h:1", "redis", "redis://:pa%23s%2Fs@h:1", "redis://:***@h:1"),
        ("redis://:p=w@h:1", "redis", "redis://:p%3Dw@h:1", "redis://:***@h:1"),
        ("x=redis://u:a@b:c@h:1/2", "x", "redis://u:a%40b%3Ac@h:1/2", "redis://u:***@h:1/2"),
        ("redis://tok@h", "redis", "redis://tok@h", "redis://***@h"),
        ("rediss://[::1]:7000?a=b", "redis", "rediss://[::1]:7000?a=b", "rediss://[::1]:7000?***"),
        ("REDIS://h:1", "redis", "redis://h:1", "redis://h:1"),
    ],
)
def test_node_urls_split_at_the_last_at_and_are_encoded_for_redis_py(
    entry: str, label: str, url: str, safe_url: str
) -> None:
    [node] = parse_nodes(entry)
    assert (node.label, node.url, node.safe_url) == (label, url, safe_url)
    assert repr(node) == f"NodeSpec(label={label!r}, safe_url={safe_url!r})"


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in Settings.model_fields:
        assert name.upper() in text, name


def test_compose_file_agrees_with_the_settings() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    app = services["app"]
    assert "ports" not in app  # nginx is the way in
    nodes = parse_nodes(app["environment"]["REDIS_NODES"])
    assert [n.label for n in nodes] == ["redis_7000", "redis_7001"]
    for node, name, host_port in zip(
        nodes, ["redis-node-1", "redis-node-2"], [7000, 7001], strict=True
    ):
        spec = services[name]
        assert urlsplit(node.url).hostname == name
        assert spec["ports"] == [f"{host_port}:{urlsplit(node.url).port}"]
        assert spec["image"].startswith("redis:8")
        assert "--appendonly" in spec["command"]
        assert spec["command"][spec["command"].index("--appendonly") + 1] == "yes"
        assert spec["volumes"][0].endswith(":/data")
        assert "healthcheck" in spec
        assert app["depends_on"][name]["condition"] == "service_healthy"
    assert app["environment"]["JOURNAL_FSYNC"] == "everysec"
    assert any(v.endswith(":" + app["environment"]["JOURNAL_DIR"]) for v in app["volumes"])
    for name, value in app["environment"].items():
        assert name.lower() in Settings.model_fields, name
        load_settings(**{name.lower(): value})


def test_dockerfile_and_requirements() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.14-slim")
    assert f"--loop uvloop --http {PROTOCOL}" in dockerfile and "--workers ${WORKERS}" in dockerfile
    pins = [
        line
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == sorted(pins)
    assert all("==" in pin for pin in pins)


MONITORING = {"prometheus", "grafana"}


def test_compose_monitoring_profile_scrapes_the_app() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        tag = services[name]["image"].partition(":")[2]
        assert tag and tag != "latest", name  # pinned
    assert all("profiles" not in spec for n, spec in services.items() if n not in MONITORING)
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (services["prometheus"]["volumes"])
    )
    grafana_volumes = "\n".join(services["grafana"]["volumes"])
    assert "./deploy/grafana/dashboard.json:" in grafana_volumes
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in grafana_volumes
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    assert [t for job in jobs for c in job["static_configs"] for t in c["targets"]] == ["app:8000"]
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "prometheus"


def test_compose_puts_nginx_in_front_with_limits() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert nginx["ports"] == ["8000:8000"]
    assert "ports" not in services["app"]
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert "healthcheck" in services["app"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]

    # The upstream is this file's app service; deploy/nginx.conf itself (listen 8000, its
    # limits) is run by the real nginx in tests/test_nginx.py.
    assert shipped_upstreams(ROOT / "deploy" / "nginx.conf") == ["app:8000"]


REPLICAS = ["app-1", "app-2"]


SECRETS = {"API_TOKEN", "VOTER_SECRET"}


def test_replicas_compose_runs_two_instances_of_the_same_app_behind_nginx() -> None:
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    replicas = yaml.safe_load((ROOT / "docker-compose.replicas.yml").read_text())
    services = replicas["services"]
    assert set(services) == {"redis-node-1", "redis-node-2", "nginx", *REPLICAS}
    for name in ["redis-node-1", "redis-node-2"]:
        assert services[name] == single[name], name  # the same nodes, ports and volumes
    journals = []
    for name in REPLICAS:
        app = dict(services[name])
        env = dict(app.pop("environment"))
        # The same secret and token on both, from the environment; the secret is required.
        assert env.pop("VOTER_SECRET").startswith("${VOTER_SECRET:?")
        assert env.pop("API_TOKEN") == "${API_TOKEN:-}"
        single_env = {k: v for k, v in single["app"]["environment"].items() if k not in SECRETS}
        assert env == single_env, name  # same nodes and settings
        assert single["app"]["environment"]["API_TOKEN"] == "${API_TOKEN:-}"
        [journal] = app.pop("volumes")
        journals.append(journal.split(":")[0])
        assert journal.endswith(":" + env["JOURNAL_DIR"])
        assert app == {
            k: v for k, v in single["app"].items() if k not in {"environment", "volumes"}
        }
        assert "ports" not in app
    assert len(set(journals)) == 2 and set(journals) <= set(replicas["volumes"])
    nginx = services["nginx"]
    assert {k: v for k, v in nginx.items() if k not in {"volumes", "depends_on"}} == {
        k: v for k, v in single["nginx"].items() if k not in {"volumes", "depends_on"}
    }
    assert nginx["volumes"] == ["./deploy/nginx.replicas.conf:/etc/nginx/nginx.conf:ro"]
    assert nginx["depends_on"] == {n: {"condition": "service_healthy"} for n in REPLICAS}

    # deploy/nginx.replicas.conf balances these two; it is run by the real nginx in front
    # of two services, with the same limits as deploy/nginx.conf (tests/test_nginx.py).
    upstreams = shipped_upstreams(ROOT / "deploy" / "nginx.replicas.conf")
    assert upstreams == [f"{name}:8000" for name in REPLICAS]

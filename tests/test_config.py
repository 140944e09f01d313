"""Settings, node parsing, and the packaging files agreeing with them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.api.bulk import MAX_BULK_BODY
from app.core.config import Settings, SettingsError, load_settings
from app.core.http_protocol import PROTOCOL
from app.core.nodes import parse_nodes, redact_url
from app.devtools.local_nodes import free_port
from tests.conftest import ServiceProcess, running_app, settings_for

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_final_stage() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert [(n.label, n.url) for n in settings.nodes] == [
        ("redis_7000", "redis://localhost:7000"),
        ("redis_7001", "redis://localhost:7001"),
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
        value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)  # compose's default, as it runs
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
OPTIONAL_FRONTS = {"pushpin", "nginx-cache"}  # docs/pushpin-and-cache.md, own profiles


def test_compose_monitoring_profile_scrapes_the_app() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
        tag = services[name]["image"].partition(":")[2]
        assert tag and tag != "latest", name  # pinned
    others = MONITORING | OPTIONAL_FRONTS
    assert all("profiles" not in spec for n, spec in services.items() if n not in others)
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


async def test_every_dashboard_query_names_a_metric_the_app_exports(tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 8
    settings = settings_for(None, journal_dir=str(tmp_path))
    async with running_app(settings) as (client, _):
        await client.post("/api/v1/vote/p", json={"option": "A"})  # a rejection, so it shows
        text = (await client.get("/metrics")).text
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for query in queries:
        named = set(re.findall(r"\bpolling_\w+", query))
        assert named, query
        assert named <= exported, (query, named - exported)


NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024, "g": 1024**3}
NGINX_TEMP = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]


def nginx_directives(text: str) -> dict[str, str]:
    """`name value;` lines of the config (the last one wins), comments dropped."""
    found = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line.endswith(";") and " " in line:
            name, value = line[:-1].split(None, 1)
            found[name] = value.strip()
    return found


def nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()  # type: ignore[union-attr]
    return int(number) * SIZE_UNITS[unit]


def test_compose_puts_nginx_in_front_with_limits() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    assert nginx["ports"] == ["8000:8000"]
    assert "ports" not in services["app"]
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"
    assert "healthcheck" in services["app"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]

    text = NGINX_CONF.read_text()
    conf = nginx_directives(text)
    assert "location = /metrics {\n            return 404;" in text  # not on the public port
    assert nginx_size(conf["client_max_body_size"]) >= MAX_BULK_BODY
    assert f"at most {MAX_BULK_BODY} bytes" in text  # nginx's 413 says what the app's does
    for name in ["client_header_timeout", "client_body_timeout", "send_timeout"]:
        assert re.fullmatch(r"\d+s", conf[name]), name
    assert "keepalive_timeout" in conf
    count, size = conf["large_client_header_buffers"].split()
    assert (int(count), nginx_size(size)) == (4, 8 * 1024)
    assert conf["server"] == "app:8000" and conf["proxy_pass"] == "http://app"
    assert conf["listen"] == "8000"


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

    text = (ROOT / "deploy" / "nginx.replicas.conf").read_text()
    upstream = re.search(r"upstream app \{(.*?)\}", text, re.S).group(1)  # type: ignore[union-attr]
    assert re.findall(r"server (\S+);", upstream) == [f"{n}:8000" for n in REPLICAS]
    # Otherwise the same nginx: the same limits and locations as deploy/nginx.conf.
    assert text.split("http {", 1)[1] == NGINX_CONF.read_text().split("http {", 1)[1].replace(
        "        server app:8000;\n", "        server app-1:8000;\n        server app-2:8000;\n"
    )


def nginx_test_config(tmp_path: Path, listen: int, upstream: str) -> Path:
    """deploy/nginx.conf for a local run: our port and upstream, temp files under tmp_path
    (Debian's build keeps them in /var/lib/nginx, which exists only once it is installed)."""
    text = NGINX_CONF.read_text()
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    text = text.replace("server app:8000;", f"server {upstream};")
    temp = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n" for kind in NGINX_TEMP)
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")


def nginx_command(config: Path, tmp_path: Path, *extra: str) -> list[str]:
    main = f"pid {tmp_path}/nginx.pid; daemon off; master_process off;"
    return [str(NGINX), "-c", str(config), "-p", str(tmp_path), "-e", "stderr", "-g", main, *extra]


@needs_nginx
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    config = nginx_test_config(tmp_path, free_port(), "127.0.0.1:9")
    check = subprocess.run(nginx_command(config, tmp_path, "-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@needs_nginx
def test_nginx_in_front_passes_votes_and_answers_its_refusals_in_the_app_shape(
    tmp_path: Path, start_service: Callable[..., ServiceProcess]
) -> None:
    service = start_service({"REDIS_NODES": "", "API_TOKEN": "tok"})
    port = free_port()
    config = nginx_test_config(tmp_path, port, f"127.0.0.1:{service.port}")
    nginx = subprocess.Popen(nginx_command(config, tmp_path), stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):  # until nginx listens
                try:
                    client.get("/")
                    break
                except httpx.TransportError:
                    assert nginx.poll() is None, nginx.stderr.read() if nginx.stderr else ""
                    time.sleep(0.05)
            r = client.post("/api/v1/vote/p", json={"option_id": "A"})
            assert r.status_code == 200, r.text
            huge = client.post(
                "/api/v1/votes",
                content=b"[" + b" " * (3 * 1024 * 1024) + b"]",
                headers={"Authorization": "Bearer tok"},
            )
            assert huge.status_code == 413
            assert huge.json() == {"detail": "request body must be at most 2097152 bytes"}
            long_head = client.get("/", headers={"X-Big": "a" * 10_000})
            assert long_head.status_code == 431
            assert long_head.json() == {"detail": "request header fields too large"}
            assert client.get("/api/v1/results/" + "p" * 10_000).status_code == 414
            assert client.get("/api/v1/results/p").json()["results"] == {"A": 1}
    finally:
        nginx.kill()
        nginx.wait()

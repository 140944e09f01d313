"""Access: passwords stay secret, TLS and passwords work, tokens compare in constant time."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trustme

from app.api.bulk import authorised
from app.core.config import SettingsError, load_settings
from app.devtools.local_nodes import free_port
from tests.conftest import NodeFactory, running_app, settings_for, stored_counts
from tests.proxies import Proxy


async def test_rediss_with_password_through_real_tls(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = start_node(password="pa55word")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    proxy = await Proxy(node.port, tls=context).start()
    try:
        settings = load_settings(
            redis_nodes=f"secure=rediss://:pa55word@127.0.0.1:{proxy.port}",
            redis_tls_ca_file=str(ca_file),
            batch_interval_seconds=3600,
        )
        async with running_app(settings) as (client, service):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
            await service.flusher.flush()
            r = await client.get("/api/v1/results/p")
            assert r.json() == {"poll_id": "p", "results": {"A": 1}, "served_via": "secure"}
            health = (await client.get("/api/v1/health")).json()
            assert health["nodes"][0]["url"] == f"rediss://:***@127.0.0.1:{proxy.port}"
        assert proxy.connections >= 1
        assert stored_counts(node, "p") == {"A": 1}
    finally:
        await proxy.stop()


async def test_rediss_rejects_a_node_it_cannot_verify(start_node: NodeFactory) -> None:
    node = start_node()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)  # a CA the service lacks
    proxy = await Proxy(node.port, tls=context).start()
    try:
        settings = load_settings(
            redis_nodes=f"rediss://127.0.0.1:{proxy.port}",
            batch_interval_seconds=3600,
            cache_ttl_seconds=0,
            shutdown_flush_seconds=0,
        )
        async with running_app(settings) as (client, _):
            r = await client.get("/api/v1/results/p")
            assert r.status_code == 503
    finally:
        await proxy.stop()


async def test_passwords_never_reach_logs_health_or_errors(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(password="t0p-secret")
    settings = settings_for([node], cache_ttl_seconds=0, shutdown_flush_seconds=0)
    with caplog.at_level(logging.DEBUG):
        async with running_app(settings) as (client, service):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
            node.kill()
            await service.flusher.flush()  # fails, and logs it
            answers = [
                await client.get("/api/v1/results/p"),
                await client.get("/api/v1/health"),
            ]
    assert any("unavailable" in r.getMessage() for r in caplog.records)
    assert all("t0p-secret" not in r.getMessage() for r in caplog.records)
    assert all("t0p-secret" not in a.text for a in answers)
    assert answers[0].status_code == 503 and "***" in answers[0].text


def test_bearer_token_check() -> None:
    assert authorised("tok", "Bearer tok")
    assert authorised("tok", "bearer tok")
    assert not authorised("tok", "Bearer tok2")
    assert not authorised("tok", "Bearer ")
    assert not authorised("tok", None)
    assert not authorised(None, "Bearer tok")
    assert not authorised("tok", "Bearer t\xf6k")


SECRET = "Qz7vWk9Xj"  # no 4 letters of it occur in any setting name


def secret_with(char: str) -> str:
    return SECRET[:3] + char + SECRET[3:]


def leaks(secret: str, text: str) -> list[str]:
    """Every 4-character piece of `secret` found in `text` (longer pieces contain one)."""
    return [secret[i : i + 4] for i in range(len(secret) - 3) if secret[i : i + 4] in text]


# (case, REDIS_NODES with {pw} and {port}, the password). Valid ones point at a free port
# where nothing listens, so the node is down and every error path runs.
VALID_URLS = [
    *[
        (f"password with {c!r}", "redis://:{pw}@127.0.0.1:{port}", secret_with(c))
        for c in "/#?=@:%"
    ],
    ("password with every special character", "redis://:{pw}@127.0.0.1:{port}", "S3/c#r?e=t@X:Y%Z"),
    ("user and password", "redis://admin:{pw}@127.0.0.1:{port}/0", secret_with("#")),
    ("username only", "redis://{pw}@127.0.0.1:{port}", SECRET),
    ("labelled", "main=redis://:{pw}@127.0.0.1:{port}", secret_with("=")),
    ("labelled, = and @", "main=rediss://u:{pw}@127.0.0.1:{port}", "S3c=re@tXYZ"),
    ("second of two", "redis://127.0.0.1:1,redis://:{pw}@127.0.0.1:{port}", secret_with("/")),
    ("password in the query", "redis://127.0.0.1:{port}/0?password={pw}", SECRET),
]
BAD_URLS = [
    ("bad port", "redis://:{pw}@127.0.0.1:12x", secret_with("#")),
    ("port over 65535", "redis://:{pw}@127.0.0.1:99999", secret_with("/")),
    ("host forgotten, password taken for a port", "redis://user:{pw}", SECRET),
    ("no host", "redis://:{pw}@:6379", secret_with("@")),
    ("no host, no @", "redis://:{pw}", secret_with("/")),
    ("bad scheme", "http://:{pw}@h:1", secret_with("?")),
    ("no scheme", ":{pw}@h:1", secret_with(":")),
    ("scheme typo and = in the password", "redis:/:{pw}@h:1", secret_with("=")),
    ("bad label", "bad label=redis://:{pw}@h:1", secret_with("%")),
    ("empty label", "=redis://:{pw}@h:1", SECRET),
    ("second entry bad", "redis://h:1,redis://:{pw}@h:x", secret_with("#")),
]


@pytest.mark.parametrize(("case", "template", "password"), BAD_URLS, ids=[c[0] for c in BAD_URLS])
def test_a_bad_node_url_is_named_by_position_without_its_password(
    case: str, template: str, password: str
) -> None:
    value = template.format(pw=password, port=6379)
    with pytest.raises(SettingsError) as error:
        load_settings(redis_nodes=value)
    message = str(error.value)
    assert not leaks(password, message), message
    entry = 2 if value.count(",") else 1
    assert f"REDIS_NODES entry {entry}: " in message


@pytest.mark.parametrize(
    ("case", "template", "password"), VALID_URLS, ids=[c[0] for c in VALID_URLS]
)
async def test_passwords_never_show_for_any_url_shape(
    case: str, template: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    value = template.format(pw=password, port=free_port())
    settings = load_settings(
        redis_nodes=value,
        batch_interval_seconds=3600,
        cache_ttl_seconds=0,
        shutdown_flush_seconds=0,
        redis_timeout_seconds=1,
    )
    shown = [repr(settings), str(settings), repr(settings.nodes)]
    shown += [node.safe_url for node in settings.nodes]
    assert "***" in settings.nodes[-1].safe_url
    with caplog.at_level(logging.DEBUG):
        async with running_app(settings) as (client, service):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
            await service.flusher.flush()  # the node is down: logged
            for poll in ["p", "q", "r", "s"]:  # some land on the node that is down
                shown.append((await client.get(f"/api/v1/results/{poll}")).text)
            health = await client.get("/api/v1/health")
            shown.append(health.text)
    assert health.status_code == 503
    assert any("unavailable" in text for text in shown)  # a NodeUnavailable message
    shown += [caplog.text, *(r.getMessage() for r in caplog.records)]
    for text in shown:
        assert not leaks(password, text), text


@pytest.mark.parametrize("labelled", [False, True])
async def test_a_password_with_special_characters_really_authenticates(
    start_node: NodeFactory, labelled: bool
) -> None:
    password = "S3#c/r?e=t@X:Y%Z"
    node = start_node(password=password)
    url = f"redis://:{password}@127.0.0.1:{node.port}"
    settings = load_settings(
        redis_nodes=f"n={url}" if labelled else url, batch_interval_seconds=3600
    )
    async with running_app(settings) as (client, service):
        await client.post("/api/v1/vote/p", json={"option_id": "A"})
        await service.flusher.flush()
        health = (await client.get("/api/v1/health")).json()
        assert health["nodes"][0]["reachable"] is True
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 1}
    assert stored_counts(node, "p") == {"A": 1}

"""Access: passwords stay secret, TLS and passwords work, tokens compare in constant time."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trustme

from app.api.bulk import authorised
from app.core.config import load_settings
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

"""The OpenAPI page documents every endpoint, with examples."""

from __future__ import annotations

import json

from tests.conftest import running_app, settings_for


async def test_every_endpoint_is_documented_with_examples() -> None:
    async with running_app(settings_for(None)) as (client, _):
        spec = (await client.get("/openapi.json")).json()
        assert (await client.get("/docs")).status_code == 200
    operations = {
        ("/", "get"),
        ("/api/v1/vote/{poll_id}", "post"),
        ("/api/v1/votes", "post"),
        ("/api/v1/results/{poll_id}", "get"),
        ("/api/v1/health", "get"),
        ("/api/v1/polls", "post"),
        ("/api/v1/polls/{poll_id}", "get"),
        ("/api/v1/polls/{poll_id}/vote", "post"),
        ("/api/v1/polls/{poll_id}/close", "post"),
        ("/api/v1/polls/{poll_id}/reveal", "post"),
        ("/api/v1/polls/{poll_id}/reopen", "post"),
        ("/api/v1/polls/{poll_id}/results", "get"),
        ("/api/v1/polls/{poll_id}/results.csv", "get"),
        ("/api/v1/polls/{poll_id}/history", "get"),
        ("/api/v1/polls/{poll_id}/stream", "get"),
        ("/api/v1/results/{poll_id}/stream", "get"),
        ("/api/v1/polls/{poll_id}/my-vote", "get"),
        ("/api/v1/polls/{poll_id}", "patch"),
        ("/api/v1/polls/{poll_id}/hide", "post"),
        ("/api/v1/polls/{poll_id}/unhide", "post"),
        ("/api/v1/events", "post"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/by-code/{code}", "get"),
        ("/api/v1/events/{event_id}", "get"),
        ("/api/v1/events/{event_id}", "delete"),
        ("/api/v1/events/{event_id}/state", "get"),
        ("/api/v1/events/{event_id}/stream", "get"),
        ("/api/v1/events/{event_id}/polls", "post"),
        ("/api/v1/events/{event_id}/current", "post"),
        ("/api/v1/events/{event_id}/order", "post"),
        ("/api/v1/events/{event_id}/join", "post"),
        ("/api/v1/events/{event_id}/leaderboard", "get"),
        ("/api/v1/events/{event_id}/export.csv", "get"),
        ("/api/v1/events/{event_id}/export.json", "get"),
    }
    assert {(p, m) for p, item in spec["paths"].items() for m in item} == operations
    for path, method in operations - {("/", "get")}:
        operation = spec["paths"][path][method]
        assert operation["summary"] and operation["description"], path
    vote = spec["paths"]["/api/v1/vote/{poll_id}"]["post"]
    assert vote["requestBody"]["content"]["application/json"]["example"] == {"option_id": "A"}
    assert vote["parameters"][0]["schema"]["examples"] == ["100"]
    assert {"200", "413", "422", "503"} <= set(vote["responses"])
    bulk = spec["paths"]["/api/v1/votes"]["post"]
    assert bulk["requestBody"]["content"]["application/json"]["example"][0]["count"] == 12
    for path in ["/api/v1/polls/{poll_id}/stream", "/api/v1/results/{poll_id}/stream"]:
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert content["text/event-stream"]["example"].startswith("id: "), path
    schemas = spec["components"]["schemas"]
    for name in ["VoteAccepted", "PollResults", "ValidationFailed", "BulkAccepted"]:
        assert schemas[name]["examples"], name
    assert "redis_7000" in json.dumps(schemas["PollResults"]["examples"])

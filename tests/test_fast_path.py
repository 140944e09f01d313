"""The fast ASGI path answers exactly as the documented FastAPI routes do.

Property-based: hypothesis makes sequences of valid and invalid requests; each sequence is
sent to a fresh service with the fast path and to one without it, and every answer (status,
body, content type, Retry-After) and the final counts must be identical.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import running_app, settings_for

ids = st.one_of(
    st.sampled_from(["100", "7", "a.b-c_d", "", "x" * 64, "x" * 65, "a b", "a/b", "é", "A\n"]),
    st.text(min_size=0, max_size=70),
    st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True),
)
json_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    ids,
    st.lists(ids, max_size=2),
)
bodies = st.one_of(
    ids.map(lambda o: {"option_id": o}),
    st.dictionaries(st.sampled_from(["option_id", "option", "x"]), json_values, max_size=3),
    json_values,
).map(lambda v: __import__("json").dumps(v).encode())
raw_bodies = st.one_of(
    bodies,
    st.binary(max_size=40),
    st.just(b'{"option_id": "' + b"A" * 1100 + b'"}'),
    st.just(b""),
)
requests = st.lists(
    st.one_of(
        st.tuples(st.just("POST"), ids, raw_bodies),
        st.tuples(st.just("GET"), ids, st.just(b"")),
    ),
    min_size=1,
    max_size=8,
)

Answer = tuple[int, bytes, str | None, str | None]


async def _answers(fast: bool, sequence: list[tuple[str, str, bytes]]) -> list[Answer]:
    answers: list[Answer] = []
    config = settings_for(
        None, fast_vote_path=fast, max_options_per_poll=3, max_pending_pairs_per_node=4
    )
    async with running_app(config) as (client, _):
        for method, poll, body in sequence:
            path = "/api/v1/vote/" if method == "POST" else "/api/v1/results/"
            url = path + quote(poll, safe="")
            r = await client.request(method, url, content=body or None)
            answers.append(
                (
                    r.status_code,
                    r.content,
                    r.headers.get("content-type"),
                    r.headers.get("retry-after"),
                )
            )
    return answers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=requests)
def test_fast_path_answers_like_the_documented_routes(
    sequence: list[tuple[str, str, bytes]],
) -> None:
    fast = asyncio.run(_answers(True, sequence))
    documented = asyncio.run(_answers(False, sequence))
    assert fast == documented


def test_the_vote_route_stays_documented_with_the_fast_path_on() -> None:
    from app.main import create_app

    app = create_app(settings_for(None, fast_vote_path=True))
    paths = app.api.openapi()["paths"]  # type: ignore[union-attr]
    assert "post" in paths["/api/v1/vote/{poll_id}"]
    assert "get" in paths["/api/v1/results/{poll_id}"]

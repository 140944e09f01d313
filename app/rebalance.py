"""`.venv/bin/python -m app.rebalance [--dry-run]`, or `make rebalance ARGS=--dry-run`: move
the polls (ad-hoc and defined), their Idempotency-Key markers and claims whose owner changed
under the ring `REDIS_NODES` names (off `REDIS_RETIRING_NODES` too), and finish moves staged
by a run that was cut off, as the service does at start. Run it with every instance stopped;
`--dry-run` only says what would move. With REDIS_CLUSTER_URL set it refuses (exit 2): a
cluster moves its own slots and has no ring of ours."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from app.core.config import SettingsError, load_settings
from app.storage.base import NodeUnavailable
from app.storage.mover import Mover, Report
from app.storage.redis_store import ShardedRedisStore


def summary(report: Report, dry_run: bool) -> list[str]:
    lines = []
    for pair, n in sorted(report.moves.items()):
        shown = report.sample.get(pair, [])
        more = f", ... ({n - len(shown)} more)" if n > len(shown) else ""
        lines.append(f"{pair[0]} -> {pair[1]}: {n} polls: {', '.join(shown)}{more}")
    share = report.moved / report.polls if report.polls else 0.0
    verb = "would move" if dry_run else "moved"
    votes = "" if dry_run else f", {report.votes} votes"
    lines.append(
        f"{verb} {report.moved} of {report.polls} polls ({share:.1%}){votes}; "
        f"{report.scanned} keys scanned"
    )
    staged = "would finish" if dry_run else "finished"
    lines.append(f"{staged} {report.staged} moves staged by an earlier run (move:*, dmove:*)")
    claims = "would move" if dry_run else "moved"
    lines.append(f"{claims} {report.claims} Idempotency-Key claims")
    return lines


async def rebalance(dry_run: bool) -> int:
    settings = load_settings()
    if settings.cluster is not None:
        print(
            "REDIS_CLUSTER_URL is set: a Redis Cluster places polls by its own slots and has "
            "no ring of ours, so nothing moves here (move slots with valkey-cli --cluster "
            "reshard; see docs/operations.md)",
            file=sys.stderr,
        )
        return 2
    if not settings.nodes:
        print("REDIS_NODES is empty: nothing to rebalance", file=sys.stderr)
        return 2
    store = ShardedRedisStore(
        settings.nodes,
        settings.virtual_nodes,
        settings.redis_timeout_seconds,
        settings.redis_tls_ca_file,
        settings.retiring_nodes,
    )
    mover = Mover(store.manager, store.call, settings.rebalance_batch)
    retiring = ", ".join(mover.manager.retiring) or "none"
    print(
        f"ring: {', '.join(mover.manager.specs)} ({settings.virtual_nodes} virtual nodes); "
        f"retiring: {retiring}"
    )
    try:
        found = [*(await mover.recorded()).values(), *(await mover.cut_off()).values()]
        for value in found:
            if isinstance(value, NodeUnavailable):
                raise value
        unnamed = mover.unnamed([v for v in found if isinstance(v, str)])
        if unnamed:
            print(
                f"stopped: the nodes record a ring or a cut-off move that names {unnamed}, "
                "which these settings do not have by that URL: name each in REDIS_NODES or "
                "REDIS_RETIRING_NODES",
                file=sys.stderr,
            )
            return 1
        report = await mover.scan(dry_run=dry_run)
        if not dry_run:
            await mover.record()
    except NodeUnavailable as exc:
        print(f"stopped: {exc}; run it again once the node is up", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print("\n".join(summary(report, dry_run)))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.rebalance", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="say what would move; move nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        code = asyncio.run(rebalance(args.dry_run))
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()

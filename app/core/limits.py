"""The process's open-file limit, and the stream cap that leaves room under it.

At start the service raises its soft open-file limit to the hard limit (`raise_open_files`)
and logs it. Connections may use the limit less `FILES_RESERVED` (the rest is for the
journal, the nodes and logs: `app.core.service_protocol`), and streams that less
`REQUEST_ROOM`, so votes and reads still get connections while the stream cap is reached.
"""

from __future__ import annotations

import resource

from app.core.config import Settings

REQUEST_ROOM = 128  # connections kept for votes and reads when streams are at their cap
UNLIMITED = 1 << 20  # what an unlimited hard limit is raised to


def raise_open_files() -> int:
    """Raise the soft open-file limit to the hard limit; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # some containers refuse: keep the soft limit
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def stream_cap(settings: Settings, open_files: int) -> int:
    """STREAM_MAX_SUBSCRIBERS, or by default what the open-file limit leaves for streams."""
    if settings.stream_max_subscribers:
        return settings.stream_max_subscribers
    return max(1, open_files - settings.files_reserved - REQUEST_ROOM)

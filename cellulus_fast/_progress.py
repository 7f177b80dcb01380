"""Progress bars that stay readable in logs."""
from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # s between updates when stderr is a file or pipe (CI logs, nohup, batch jobs)


def progress_bar(iterable: Any = None, **options: Any) -> tqdm:
    """tqdm, throttled to one update every :data:`LOG_INTERVAL` seconds when stderr is not a terminal:
    there every refresh (10 a second by default) is kept, and a demo's log would hold thousands."""
    if not sys.stderr.isatty():
        options.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, **options)

"""Temp files a killed writer left behind (`kill -9`, a cron job's timeout, the OOM killer):
each names its writer's pid, and is removed once that process is gone."""

from __future__ import annotations

import os
import re
from contextlib import suppress
from pathlib import Path


def remove_orphans(folder: Path, name: re.Pattern[str]) -> None:
    """Delete the files of `folder` whose whole name `name` matches, its first group the
    writer's pid, when that process is gone: one whose process still runs may be another
    run's file in the making."""
    with suppress(OSError):
        for entry in os.scandir(folder):
            found = name.fullmatch(entry.name)
            if found and not running(int(found.group(1))):
                with suppress(OSError):
                    os.unlink(entry.path)


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process: alive
    return True

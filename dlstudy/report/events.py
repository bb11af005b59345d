"""Run events for logs: study started / finished, instance failed, run summary.

Events are ordinary log records on the `dlstudy.events` logger carrying `event` and `fields`
attributes, so they go wherever logging goes (`--log-file`, `-v`). `JsonFormatter` renders every
record as one JSON object a line (`--log-format json`), events with their fields at the top level:

    {"time": "2026-01-31T02:00:04.120Z", "level": "info", "event": "study_finished",
     "study": "2.25.1", "downloaded": 60, "failed": 0, "complete": true}

`EventSink` wraps a progress sink and turns the download's progress calls into events.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from typing import Any

from ..model import InstanceRef
from .progress import Listed, ProgressSink

log = logging.getLogger("dlstudy.events")


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event; in text logs it reads `study_finished study=2.25.1 downloaded=60 ...`."""
    if not log.isEnabledFor(level):
        return
    text = " ".join([event, *(f"{key}={_text(value)}" for key, value in fields.items())])
    log.log(level, "%s", text, extra={"event": event, "fields": fields})


def _text(value: Any) -> str:
    if isinstance(value, str) and (not value or any(c.isspace() or c in "\"'=" for c in value)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; plain log messages become `{"event": "log", "message": ...}`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        data: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        else:
            data["logger"] = record.name
            data["message"] = record.getMessage()
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class EventSink:
    """A progress sink that also logs events, and counts what each study downloaded."""

    def __init__(self, inner: ProgressSink) -> None:
        self.inner = inner
        self.downloaded: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.closed = False

    def resolving(self, study_uid: str) -> None:
        emit("study_started", study=study_uid)
        self.inner.resolving(study_uid)

    def start(self, total: int, skipped: int, listed: Listed | None = None) -> None:
        self.inner.start(total, skipped, listed)

    def advance(self, nbytes: int) -> None:
        self.inner.advance(nbytes)

    def instance_done(self, ref: InstanceRef, nbytes: int) -> None:
        self.downloaded[ref.study_uid] += 1
        self.bytes[ref.study_uid] += nbytes
        self.inner.instance_done(ref, nbytes)

    def instance_present(self, ref: InstanceRef, nbytes: int) -> None:
        """An instance fetched again to check a file it found the server's bytes (--verify):
        done, as the display counts it, but not downloaded."""
        self.bytes[ref.study_uid] += nbytes
        self.inner.instance_done(ref, nbytes)

    def instance_failed(self, ref: InstanceRef, reason: str) -> None:
        self.failed[ref.study_uid] += 1
        emit(
            "instance_failed",
            study=ref.study_uid,
            series=ref.series_uid,
            sop=ref.sop_uid,
            reason=reason,
        )
        self.inner.instance_failed(ref, reason)

    def close(self) -> None:
        if not self.closed:  # the download closes it, and so does sync when nothing was pending
            self.closed = True
            self.inner.close()

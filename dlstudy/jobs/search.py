"""The library's `search_async`: a study search, its settings and query checked first as
`download()` checks them (a timeout of 0 was sent, and failed as a stalled server, exit 3)."""

from __future__ import annotations

from collections.abc import Callable

from ..dicomweb import search
from ..dicomweb.search import StudyQuery, StudyRecord
from ..errors import UsageError
from ..settings import Settings
from .download import check_arguments, check_settings


async def search_async(
    settings: Settings, query: StudyQuery, each: Callable[[StudyRecord], object] | None = None
) -> list[StudyRecord]:
    """Every study matching `query`, in the server's order, each once; `each` is called with
    every one as its page arrives."""
    check_arguments(settings, None, needed=True)
    check_settings(settings)
    if not isinstance(query, StudyQuery):
        raise UsageError(f"query must be a dlstudy.StudyQuery, not {type(query).__name__}")
    return await search.search_async(settings, query, each)

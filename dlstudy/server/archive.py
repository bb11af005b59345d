"""What the app serves from: a folder of files, or a virtual archive. Both answer the same four
questions: a QIDO search, the instances of a WADO resource, their transfer syntaxes, metadata."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from . import qido, wado
from .index import Index, Instance, still_indexed
from .options import ServerOptions
from .virtual import VirtualArchive

log = logging.getLogger("dlstudy.server")


class Archive(Protocol):
    # Whether a search may read files (includefield): it then runs off the event loop.
    search_reads_files: bool

    def search(
        self,
        query: qido.Query,
        *,
        study_uid: str | None,
        series_uid: str | None,
        base_url: str,
        max_page_size: int | None,
        ignore_offset: bool,
    ) -> qido.Page: ...

    def select(self, uids: list[str]) -> Sequence[wado.Retrievable]:
        """The instances of [study, series?, instance?]; empty when there is no such thing."""
        ...

    async def still_there(
        self, instances: Sequence[wado.Retrievable]
    ) -> Sequence[wado.Retrievable]:
        """Those of `instances` whose file is still the one indexed."""
        ...

    def transfer_syntaxes(self, instances: Sequence[wado.Retrievable]) -> set[str]: ...

    async def metadata(self, instances: Sequence[wado.Retrievable], base_url: str) -> bytes: ...

    async def bulkdata(
        self, instance: wado.Retrievable, tag: int, *, multipart: bool
    ) -> wado.Body | None:
        """A value metadata gave as a BulkDataURI; None if there is none."""
        ...


def open_archive(options: ServerOptions) -> Archive:
    """The folder of `options.root`, indexed now, or the virtual archive `options.virtual`."""
    if options.virtual is not None:
        return VirtualArchive(options.virtual)
    assert options.root is not None  # ServerOptions asks for one or the other
    return FolderArchive(Index.scan(options.root))


class FolderArchive:
    search_reads_files = True

    def __init__(self, index: Index) -> None:
        self.index = index

    def search(
        self,
        query: qido.Query,
        *,
        study_uid: str | None,
        series_uid: str | None,
        base_url: str,
        max_page_size: int | None,
        ignore_offset: bool,
    ) -> qido.Page:
        return qido.search(
            self.index,
            query,
            study_uid=study_uid,
            series_uid=series_uid,
            base_url=base_url,
            max_page_size=max_page_size,
            ignore_offset=ignore_offset,
        )

    def select(self, uids: list[str]) -> list[Instance]:
        study = self.index.by_uid.get(uids[0])
        if study is None:
            return []
        series_list = study.series
        if len(uids) > 1:
            series_list = [s for s in series_list if s.uid == uids[1]]
        instances = [i for s in series_list for i in s.instances]
        if len(uids) > 2:
            instances = [i for i in instances if i.sop_uid == uids[2]]
        return instances

    async def still_there(
        self, instances: Sequence[wado.Retrievable]
    ) -> Sequence[wado.Retrievable]:
        # Checked before the status line goes out, so a file removed or rewritten since
        # indexing is a 410 or a part left out, not a 200 cut short. (A series' files are
        # looked at off the event loop; one instance's, the common request, costs a stat.)
        files = [i for i in instances if isinstance(i, Instance)]
        if len(files) == 1:
            return _still_indexed(files)
        return await asyncio.to_thread(_still_indexed, files)

    def transfer_syntaxes(self, instances: Sequence[wado.Retrievable]) -> set[str]:
        return {i.transfer_syntax for i in instances}

    async def metadata(self, instances: Sequence[wado.Retrievable], base_url: str) -> bytes:
        return await wado.metadata([i for i in instances if isinstance(i, Instance)], base_url)

    async def bulkdata(
        self, instance: wado.Retrievable, tag: int, *, multipart: bool
    ) -> wado.Body | None:
        if not isinstance(instance, Instance):
            return None
        return await asyncio.to_thread(wado.bulkdata, instance, tag, multipart=multipart)


def _still_indexed(files: list[Instance]) -> list[Instance]:
    found = []
    for instance in files:
        if still_indexed(instance):
            found.append(instance)
        else:
            log.warning("not served: %s changed or was removed since indexing", instance.path)
    return found

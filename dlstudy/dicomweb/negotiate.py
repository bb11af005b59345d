"""Which retrieval form a server accepts, found once per run and then remembered.

Servers disagree (DOMAIN.md): some serve single-part instances, Orthanc answers them 400 and
dcm4chee 406; some want `type="application/dicom"` quoted, others unquoted; a few reject
`transfer-syntax=*`. The first instance walks the candidates in order of preference while the
other workers wait; every later request uses the form that worked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from ..errors import HttpStatusError
from .media import multipart_accept, single_part_accept

log = logging.getLogger(__name__)

T = TypeVar("T")

# "I will not serve it in that form": try the next form. Anything else is about the instance.
NEGOTIABLE_STATUS = frozenset({400, 406, 415})


@dataclass(frozen=True)
class Retrieval:
    single_part: bool
    transfer_syntax: str | None
    quote_type: bool = True

    @property
    def accept(self) -> str:
        if self.single_part:
            return single_part_accept(self.transfer_syntax)
        return multipart_accept(self.transfer_syntax, quote_type=self.quote_type)

    def as_dict(self) -> dict[str, Any]:
        return {
            "form": "single-part" if self.single_part else "multipart",
            "transfer_syntax": self.transfer_syntax,
            "accept": self.accept,
        }


def candidates(transfer_syntax: str | None, *, single_part: bool) -> list[Retrieval]:
    """Retrieval forms in order of preference; without `single_part`, multipart ones only."""
    forms = []
    syntaxes = [transfer_syntax, None] if transfer_syntax else [None]
    for syntax in syntaxes:
        if single_part:
            forms.append(Retrieval(True, syntax))
        forms.append(Retrieval(False, syntax, quote_type=True))
        forms.append(Retrieval(False, syntax, quote_type=False))
    return forms


class Negotiator:
    """`remember_refusal`: once every form was refused, refuse at once from then on. Right for
    series/study retrieval (the server does not do it); wrong per instance, where one bad
    instance could be refused in every form while the others are fine."""

    def __init__(self, forms: list[Retrieval], *, remember_refusal: bool = False) -> None:
        self._forms = forms
        self._remember_refusal = remember_refusal
        self._index = 0
        self.settled = len(forms) == 1
        self._lock = anyio.Lock()
        self.rejected: list[str] = []
        self.warnings: list[str] = []
        self._refusal: HttpStatusError | None = None  # every form refused: the server's answer

    @property
    def current(self) -> Retrieval:
        return self._forms[self._index]

    async def run(self, attempt: Callable[[Retrieval], Awaitable[T]]) -> T:
        """Run `attempt` with the settled form, or find that form with this attempt."""
        if self._refusal is not None:
            raise self._refusal  # the server refused every form already: don't ask again
        if not self.settled:
            async with self._lock:
                if not self.settled:
                    return await self._negotiate(attempt)
        return await attempt(self.current)

    async def _negotiate(self, attempt: Callable[[Retrieval], Awaitable[T]]) -> T:
        while True:
            form = self.current
            try:
                result = await attempt(form)
            except HttpStatusError as exc:
                if exc.status_code not in NEGOTIABLE_STATUS:
                    raise
                self.rejected.append(f"{form.accept} -> HTTP {exc.status_code}")
                log.info("server refused %s (HTTP %d)", form.accept, exc.status_code)
                if self._index + 1 < len(self._forms):
                    self._index += 1
                    continue
                if self._remember_refusal:
                    self._refusal = exc
                raise
            self.settled = True
            wanted = self._forms[0].transfer_syntax
            if wanted is not None and form.transfer_syntax is None:
                warning = f"server refused transfer-syntax={wanted}; it may transcode what it sends"
                self.warnings.append(warning)
                log.warning("%s", warning)
            return result

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.current.as_dict(),
            "settled": self.settled,
            "rejected": self.rejected,
            "warnings": self.warnings,
        }

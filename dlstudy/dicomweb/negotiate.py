"""Which retrieval form a server accepts, found once per run and then remembered.

Servers disagree (DOMAIN.md): some serve single-part instances, Orthanc answers them 400 and
dcm4chee 406; some want `type="application/dicom"` quoted, others unquoted; a few reject
`transfer-syntax=*`. The first instance walks the candidates in order of preference while the
other workers wait (unless its attempt fails in a way that says nothing about the form); every
later request uses the form that worked.
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
    """One attempt at a time probes a form not yet known to work; the others wait for its
    answer. A refusal (NEGOTIABLE_STATUS) moves on to the next form, a success settles the
    form. Any other failure (a timeout, a network error, a 5xx, a 404) says nothing about the
    form: the probe is then inconclusive and the waiting attempts go ahead with the current
    form at once, together, instead of each probing in turn (a hung archive would cost one
    timeout per instance, one after the other). Whichever of them is refused still moves the
    form on once, and the next form is probed by one attempt again.

    `remember_refusal`: once every form was refused, refuse at once from then on. Right for
    series/study retrieval (the server does not do it); wrong per instance, where one bad
    instance could be refused in every form while the others are fine."""

    def __init__(self, forms: list[Retrieval], *, remember_refusal: bool = False) -> None:
        self._forms = forms
        self._remember_refusal = remember_refusal
        self._index = 0
        self.settled = len(forms) == 1
        self._inconclusive = False  # the current form's probe failed without an answer on it
        self._lock = anyio.Lock()
        self.rejected: list[str] = []
        self.warnings: list[str] = []
        self._refusal: HttpStatusError | None = None  # every form refused: the server's answer

    @property
    def current(self) -> Retrieval:
        return self._forms[self._index]

    @property
    def wanted(self) -> Retrieval:
        """The form asked for first: the one of the transfer syntax the run wants."""
        return self._forms[0]

    async def run(self, attempt: Callable[[Retrieval], Awaitable[T]]) -> T:
        """Run `attempt` with the settled form, or find that form with this attempt."""
        while True:
            if self._refusal is not None:
                raise self._refusal  # the server refused every form already: don't ask again
            if self.settled:
                return await attempt(self.current)
            if self._inconclusive:
                outcome = await self._try(attempt, self._index)
            else:
                async with self._lock:
                    if self.settled or self._inconclusive:
                        continue
                    outcome = await self._try(attempt, self._index)
            if outcome is not None:
                return outcome[0]

    async def _try(
        self, attempt: Callable[[Retrieval], Awaitable[T]], index: int
    ) -> tuple[T] | None:
        """(result,) when form `index` worked; None when it was refused and another form is
        left to try; raises anything else."""
        form = self._forms[index]
        try:
            result = await attempt(form)
        except HttpStatusError as exc:
            if exc.status_code not in NEGOTIABLE_STATUS:
                self._inconclusive = True
                raise
            self._refused(index, exc)
            return None
        except Exception:
            self._inconclusive = True
            raise
        self._settle(index)
        return (result,)

    def _refused(self, index: int, exc: HttpStatusError) -> None:
        """Form `index` was refused: move on to the next form, unless another attempt did
        already; raise when it was the last."""
        if self.settled or index < self._index:
            return  # another attempt moved on (or found a form) meanwhile: try that one
        form = self._forms[index]
        self.rejected.append(f"{form.accept} -> HTTP {exc.status_code}")
        log.info("server refused %s (HTTP %d)", form.accept, exc.status_code)
        if index + 1 < len(self._forms):
            self._index = index + 1
            self._inconclusive = False  # the next form gets one probe first
            return
        if self._remember_refusal:
            self._refusal = exc
        raise exc

    def _settle(self, index: int) -> None:
        if self.settled:
            return
        self._index = index
        self.settled = True
        wanted = self.wanted.transfer_syntax
        form = self._forms[index]
        if wanted is not None and form.transfer_syntax is None:
            warning = f"server refused transfer-syntax={wanted}; it may transcode what it sends"
            self.warnings.append(warning)
            log.warning("%s", warning)

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.current.as_dict(),
            "settled": self.settled,
            "rejected": self.rejected,
            "warnings": self.warnings,
        }

"""Bearer tokens that expire: `--token-command` runs at start and again when a 401 says so.

The refresh is single-flight: whichever request sees the 401 first runs the command while the
others wait, then each replays with the new token. A fresh token refused on its first use, or
a command that fails, is an AuthError that stops the run. The command's output is a secret:
it is never logged, and errors name only the exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import AsyncGenerator, Generator

import anyio
import anyio.abc
import httpx

from ..errors import AuthError, TransferError
from ..settings import Settings
from .credentials import has_control_character
from .failures import redirected_elsewhere
from .urls import redact_url

# A token command that takes longer than this is stuck (waiting for a password prompt, say).
TOKEN_COMMAND_TIMEOUT = 60.0
# Sends of one request, each with the token current at the time: bounds the replays of a
# request that keeps meeting tokens expiring under it.
MAX_TRIES = 10


class TokenCommand:
    def __init__(self, command: str, *, timeout: float = TOKEN_COMMAND_TIMEOUT) -> None:
        self.command = command
        self.timeout = timeout

    async def fetch(self) -> str:
        """Run the command through the shell; its stripped stdout is the token.

        It runs in a session of its own, killed whole when it outlives `timeout` or the run is
        cancelled (Ctrl-C): killing the shell alone left what it started running (a `sleep`,
        a login helper waiting for input), holding its output open."""
        process = await self._start()
        finished = False
        try:
            with anyio.fail_after(self.timeout):
                output = await _read_to_end(process)
                returncode = await process.wait()
            finished = True
        except TimeoutError as exc:
            raise AuthError(
                f"--token-command did not finish within {self.timeout:g} s", status_code=401
            ) from exc
        finally:
            if not finished:
                _kill_session(process.pid)
            await process.aclose()
        if returncode != 0:
            raise AuthError(
                f"--token-command failed with exit status {returncode}", status_code=401
            )
        token = output.decode("utf-8", "replace").strip()
        if not token or has_control_character(token):
            raise AuthError("--token-command must print one token on one line", status_code=401)
        if not token.isascii():  # RFC 6750: a bearer token is ASCII (see credentials.py)
            raise AuthError(
                "--token-command printed a token with a character that is not ASCII in it",
                status_code=401,
            )
        return token

    async def _start(self) -> anyio.abc.Process:
        try:
            return await anyio.open_process(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise AuthError(
                f"--token-command could not run: {exc.strerror}", status_code=401
            ) from exc


async def _read_to_end(process: anyio.abc.Process) -> bytes:
    chunks = []
    if process.stdout is not None:
        async for chunk in process.stdout:
            chunks.append(chunk)
    return b"".join(chunks)


def _kill_session(leader: int) -> None:
    """Kill every process of the session `leader` started (its process group: setsid made it
    one), whether the leader is still running or not."""
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # none left


class RefreshingBearerAuth(httpx.Auth):
    """Bearer auth with a token that `command` renews when the server says it expired.

    A token is proven by its first answer. While a fresh token's first request is out, the
    others wait for it: a fresh token refused on that first use is the only 401 (besides a
    failing command) that stops the run. A 401 on a request sent with an older token than the
    current one is replayed with the current token; a 401 on a proven current token means it
    expired, and one request (single-flight) runs the command again. A request that meets
    MAX_TRIES expiries in a row fails as retryable (TransferError): others are being served.
    """

    requires_response_body = False

    def __init__(self, command: TokenCommand, token: str) -> None:
        self.command = command
        self._token = token
        self._generation = 0
        self._proven = False
        self._trial: anyio.Event | None = None  # set when the unproven token's trial ends
        self._lock = anyio.Lock()
        self.refreshes = 0

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("dlstudy only uses the async client")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        for _ in range(MAX_TRIES):
            while not self._proven and self._trial is not None:
                await self._trial.wait()
            generation = self._generation
            trial = None if self._proven else self._start_trial()
            request.headers["Authorization"] = f"Bearer {self._token}"
            try:
                response = yield request
                # A 401 from a redirect target on another origin (an expired link) is not about
                # the token, which was not sent there: the archive took it to redirect.
                if response.status_code != 401 or redirected_elsewhere(response):
                    if generation == self._generation:
                        self._proven = True
                    return
            finally:
                if trial is not None:
                    self._end_trial(trial)
            if generation != self._generation:
                continue  # sent with a token since replaced: replay with the current one
            if trial is not None:  # a fresh token refused on first use: the run stops
                shown = redact_url(str(response.url))
                raise AuthError(
                    f"server rejected the token --token-command printed: HTTP 401 on {shown} "
                    "(check what the command prints)",
                    url=shown,
                    status_code=401,
                )
            await self._refresh(generation)
        # Every token this request was sent with had been proven by another request and
        # expired under it: no sign of wrong credentials, so not the run's end. The request
        # is retried later, as any transient failure is.
        raise TransferError(
            f"the access token expired under this request {MAX_TRIES} times in a row",
            url=redact_url(str(request.url)),
            retryable=True,
        )

    def _start_trial(self) -> anyio.Event:
        self._trial = anyio.Event()
        return self._trial

    def _end_trial(self, trial: anyio.Event) -> None:
        if self._trial is trial:
            self._trial = None
        trial.set()

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request refreshed while this one waited
            self._token = await self.command.fetch()
            self._generation += 1
            self._proven = False
            self.refreshes += 1


async def auth_from_settings(settings: Settings) -> RefreshingBearerAuth | None:
    """The refreshing bearer auth of `--token-command`, its first token fetched; else None
    (static credentials are the Transport's business)."""
    if not settings.token_command:
        return None
    command = TokenCommand(settings.token_command)
    token = await command.fetch()
    return RefreshingBearerAuth(command, token)

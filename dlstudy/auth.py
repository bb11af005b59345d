"""Bearer tokens that expire: `--token-command` runs at start and again when a 401 says so.

The refresh is single-flight: whichever request sees the 401 first runs the command while the
others wait, then every one of them replays once with the new token. A second 401, or a command
that fails, is an AuthError that stops the run. The command's output is a secret: it is never
logged, and errors name only the exit status.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncGenerator, Generator

import anyio
import httpx

from .errors import AuthError
from .settings import Settings

# A token command that takes longer than this is stuck (waiting for a password prompt, say).
TOKEN_COMMAND_TIMEOUT = 60.0


class TokenCommand:
    def __init__(self, command: str, *, timeout: float = TOKEN_COMMAND_TIMEOUT) -> None:
        self.command = command
        self.timeout = timeout

    def run(self) -> str:
        """Run the command through the shell; its stripped stdout is the token."""
        try:
            result = subprocess.run(
                ["/bin/sh", "-c", self.command],
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AuthError(
                f"--token-command did not finish within {self.timeout:g} s", status_code=401
            ) from exc
        except OSError as exc:
            raise AuthError(
                f"--token-command could not run: {exc.strerror}", status_code=401
            ) from exc
        token = result.stdout.decode("utf-8", "replace").strip()
        if result.returncode != 0:
            raise AuthError(
                f"--token-command failed with exit status {result.returncode}", status_code=401
            )
        if not token or "\n" in token:
            raise AuthError("--token-command must print one token on one line", status_code=401)
        return token


class RefreshingBearerAuth(httpx.Auth):
    requires_response_body = False

    def __init__(self, command: TokenCommand, token: str) -> None:
        self.command = command
        self._token = token
        self._generation = 0
        self._lock = anyio.Lock()
        self.refreshes = 0

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("dlstudy only uses the async client")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        generation = self._generation
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            await self._refresh(generation)
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request  # a second 401 goes back to the caller, which stops the run

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another request refreshed while this one waited
            self._token = await anyio.to_thread.run_sync(self.command.run)
            self._generation += 1
            self.refreshes += 1


async def auth_from_settings(settings: Settings) -> RefreshingBearerAuth | None:
    """The refreshing bearer auth of `--token-command`, its first token fetched; else None
    (static credentials are the Transport's business)."""
    if not settings.token_command:
        return None
    command = TokenCommand(settings.token_command)
    token: str = await anyio.to_thread.run_sync(command.run)
    return RefreshingBearerAuth(command, token)

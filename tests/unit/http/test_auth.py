"""The refreshing bearer auth's flow, driven directly: what a request does when the tokens it
is sent with keep expiring under it."""

from __future__ import annotations

import anyio
import httpx
import pytest

from dlstudy.errors import TransferError
from dlstudy.http.auth import MAX_TRIES, RefreshingBearerAuth, TokenCommand


def test_a_request_that_keeps_meeting_expired_tokens_fails_as_retryable() -> None:
    """Every send meets a token other requests proved and that expired meanwhile (401 on a
    token already replaced): after MAX_TRIES sends the request fails as retryable, not as
    rejected credentials, which would stop the whole run."""
    auth = RefreshingBearerAuth(TokenCommand("echo tok-next"), "tok-0")
    auth._proven = True  # another request's answer proved tok-0

    async def run() -> tuple[list[str], TransferError]:
        flow = auth.async_auth_flow(httpx.Request("GET", "http://127.0.0.1:1/dicomweb/x?k=s"))
        sent = [(await flow.__anext__()).headers["Authorization"]]
        with pytest.raises(TransferError) as caught:
            while True:
                # Meanwhile another request refreshed the token and proved the new one.
                auth._generation += 1
                auth._token = f"tok-{auth._generation}"
                request = await flow.asend(httpx.Response(401))
                sent.append(request.headers["Authorization"])
        return sent, caught.value

    sent, error = anyio.run(run)
    assert sent == [f"Bearer tok-{n}" for n in range(MAX_TRIES)]
    assert error.retryable
    assert str(error) == f"the access token expired under this request {MAX_TRIES} times in a row"
    assert error.url == "http://127.0.0.1:1/dicomweb/x?k=***"
    assert auth.refreshes == 0  # nothing for this request to renew: others did

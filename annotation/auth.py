"""Label Studio authentication for our client: legacy API tokens and personal access tokens (PAT).

Label Studio 1.23 gives new organisations personal access tokens: a JWT *refresh* token that is not sent
with each call but exchanged at `POST /api/token/refresh/` for a short-lived access token, sent as
`Authorization: Bearer <access>`. Legacy tokens (40 hex digits, what `hv annotate serve` creates) go as
`Authorization: Token <key>`. `LABEL_STUDIO_API_KEY` may hold either; which one is read from its shape.

The access token is renewed a minute before its `exp`, and once more when the server answers 401 to it
(a clock skew, a revoked session). Neither token is ever put into a message, a log or a file.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Generator
from typing import Any, Literal

import httpx

from annotation.errors import AnnotationError

TokenKind = Literal["legacy", "personal"]
REFRESH_PATH = "api/token/refresh/"
RENEW_BEFORE_S = 60.0  # renew an access token this long before it expires: a request in flight must not outlive it


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, unverified (the server verifies; we only need `exp` and `token_type`), or None when
    `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def token_kind(token: str) -> TokenKind:
    """ "personal" for a PAT (a JWT refresh token), "legacy" otherwise; an expired or wrong-kind JWT fails here."""
    claims = jwt_claims(token)
    if claims is None:
        return "legacy"
    if claims.get("token_type") != "refresh":
        raise AnnotationError(
            "LABEL_STUDIO_API_KEY holds a JWT that is not a personal access token (a refresh token); copy the "
            "token from Account & Settings > Personal Access Token"
        )
    expires = claims.get("exp")
    if isinstance(expires, (int, float)) and expires < time.time():
        raise AnnotationError("the personal access token in LABEL_STUDIO_API_KEY has expired; create a new one")
    return "personal"


class LabelStudioAuth(httpx.Auth):
    """An httpx auth flow for either token kind (see the module docstring)."""

    requires_response_body = True  # the refresh answer is read inside the flow

    def __init__(self, base_url: str, api_key: str) -> None:
        self.kind: TokenKind = token_kind(api_key)
        self._api_key = api_key
        self._refresh_url = httpx.URL(base_url.rstrip("/") + "/").join(REFRESH_PATH)
        self._access: str | None = None
        self._access_expires = 0.0
        self.refreshes = 0  # how many access tokens were fetched (reported by tests, never the tokens)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.kind == "legacy":
            request.headers["Authorization"] = f"Token {self._api_key}"
            yield request
            return
        if self._access is None or time.time() > self._access_expires - RENEW_BEFORE_S:
            self._store(_checked_refresh((yield self._refresh_request())))
        request.headers["Authorization"] = f"Bearer {self._access}"
        response = yield request
        if response.status_code == 401:
            self._store(_checked_refresh((yield self._refresh_request())))
            request.headers["Authorization"] = f"Bearer {self._access}"
            yield request

    def _refresh_request(self) -> httpx.Request:
        return httpx.Request("POST", self._refresh_url, json={"refresh": self._api_key})

    def _store(self, access: str) -> None:
        claims = jwt_claims(access) or {}
        expires = claims.get("exp")
        self._access = access
        # No `exp`: use it for this request and fetch a new one for the next.
        self._access_expires = float(expires) if isinstance(expires, (int, float)) else 0.0
        self.refreshes += 1


def _checked_refresh(response: httpx.Response) -> str:
    if response.status_code in (400, 401, 403):
        raise AnnotationError(
            f"Label Studio at {response.request.url.copy_with(path='/', query=None)} refused the personal access "
            f"token from LABEL_STUDIO_API_KEY (HTTP {response.status_code} from /{REFRESH_PATH}): it was revoked "
            "or belongs to another server; create a new one"
        )
    try:
        access = response.json().get("access")
    except (ValueError, AttributeError):
        access = None
    if response.status_code != 200 or not isinstance(access, str):
        raise AnnotationError(
            f"Label Studio did not give an access token for the personal access token (HTTP {response.status_code} "
            f"from /{REFRESH_PATH}); is this Label Studio 1.20 or newer?"
        )
    return access

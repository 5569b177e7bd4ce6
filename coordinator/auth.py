"""API keys at the client-facing edges: `Authorization: Bearer KEY` (HTTP header, gRPC
metadata). One rule for both; the key itself is never logged or echoed."""

from __future__ import annotations

import hmac
import os

from slos_serve.config import API_KEY_ENV


class ApiKey:
    __slots__ = ("_key",)

    def __init__(self, key: str) -> None:
        if not key:
            raise ValueError("an API key must not be empty")
        self._key = key.encode()

    @classmethod
    def configured(cls, flag: str | None) -> ApiKey | None:
        """The key of `--api-key`, else of $SLOS_SERVE_API_KEY; None: no authentication."""
        key = flag if flag else os.environ.get(API_KEY_ENV, "")
        return cls(key) if key else None

    def problem(self, authorization: str | None) -> str:
        """Why an `authorization` value is refused ("" = accepted)."""
        if not authorization:
            return "missing API key: send the header 'Authorization: Bearer <key>'"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed authorization: expected 'Bearer <key>'"
        if not hmac.compare_digest(token.strip().encode(), self._key):
            return "invalid API key"
        return ""

    def __repr__(self) -> str:  # never the key
        return "ApiKey(***)"

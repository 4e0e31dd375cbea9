"""Optional API keys: ``[server] api_key_env`` names an environment variable holding comma-separated
keys. A request sends one as ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

from __future__ import annotations

import hmac
import os

from starlette.requests import Request

from fsql.server.errors import UnauthorizedError


class ApiKeys:
    def __init__(self, env: str | None) -> None:
        raw = os.environ.get(env, "") if env else ""
        self.keys = [k.strip().encode() for k in raw.split(",") if k.strip()]
        self.env = env

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not given:
            raise UnauthorizedError("missing API key", hint="send Authorization: Bearer KEY or X-API-Key: KEY")
        candidate = given.encode()
        # Compare with every key, without stopping early, so timing says nothing about which matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise UnauthorizedError("invalid API key", hint=f"use one of the keys in ${self.env}")

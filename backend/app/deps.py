"""Shared request dependencies: the database session and the optional access token."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Path

from core.settings import get_settings

from .db import get_session

SessionDep = Depends(get_session)


def bearer(authorization: str | None) -> str | None:
    """The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110), and a
    header without it is no token."""
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    return (credentials.strip() or None) if scheme.lower() == "bearer" else None


def require_token(authorization: str | None = Header(None), x_blocklab_token: str | None = Header(None)) -> None:
    """With BLOCKLAB_TOKEN set, state-changing requests must carry it (Bearer or X-BlockLab-Token)."""
    token = get_settings().token
    if not token:
        return
    given = x_blocklab_token or bearer(authorization)
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "this lab requires its access token (BLOCKLAB_TOKEN) for changes")


WriteAccess = Depends(require_token)


# Database ids: positive and within SQLite's 64-bit integers (a larger one is a 422, not a crash).
MAX_ID = 2**62
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

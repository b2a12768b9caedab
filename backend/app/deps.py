"""Shared request dependencies: the database session and the optional access token."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from core.settings import get_settings

from .db import get_session
from .security import token_given

SessionDep = Depends(get_session)


def require_token(request: Request) -> None:
    """With BLOCKLAB_TOKEN set, requests must carry it (security.token_given). The guard (security.TokenGate) asks
    it of every API route already; as a dependency it also marks the routes that change state."""
    token = get_settings().token
    if token and not token_given(request.headers, token):
        raise HTTPException(401, "this lab requires its access token (BLOCKLAB_TOKEN) for changes")


WriteAccess = Depends(require_token)


# Database ids: positive and within SQLite's 64-bit integers (a larger one is a 422, not a crash).
MAX_ID = 2**62
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]

"""The browser's session: the UI shows the token once (the guard checks it), and gets a cookie that its event
streams carry (an EventSource cannot send a header). See security.SESSION_COOKIE for why a cookie."""
from fastapi import APIRouter, Request, Response

from core.settings import get_settings

from ..deps import WriteAccess
from ..security import SESSION_COOKIE, session_value

router = APIRouter(prefix="/api", tags=["session"])

SESSION_DAYS = 30  # the UI asks for the token again after this long, or when BLOCKLAB_TOKEN changes


@router.post("/session", status_code=204, dependencies=[WriteAccess])
def open_session(request: Request):
    """Give the browser that sent the token a cookie standing for it (nothing to do in a lab without a token)."""
    response = Response(status_code=204)
    token = get_settings().token
    if token:
        response.set_cookie(SESSION_COOKIE, session_value(token), max_age=SESSION_DAYS * 86400, path="/api",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response

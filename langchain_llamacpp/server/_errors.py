"""Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), each with its HTTP status.

Everything a request can get wrong is one of these, raised where it is found (the in-process API raises
them too), so that the HTTP layer only turns them into responses: bad input is never a 500.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request that cannot be answered: `status` is its HTTP status, `param` the field at fault."""

    status = 500
    kind = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    """400: the request is malformed or asks for what cannot be done; `param` names the field."""

    status = 400
    kind = "invalid_request_error"


class Unauthorized(APIError):
    """401: no API key, or the wrong one."""

    status = 401
    kind = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("missing or invalid API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        self.headers = {"WWW-Authenticate": "Bearer"}


class NotFound(APIError):
    """404: an unknown model or route."""

    status = 404
    kind = "invalid_request_error"


class TooLarge(APIError):
    """413: a request body over the server's limit."""

    status = 413
    kind = "invalid_request_error"


class Overloaded(APIError):
    """503: the model's queue is full; the client may retry after `Retry-After` seconds."""

    status = 503
    kind = "server_error"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, code="server_overloaded")
        self.headers = {"Retry-After": str(retry_after_s)}


class Timeout(APIError):
    """504: the request ran past its `timeout` and was cancelled."""

    status = 504
    kind = "server_error"


def from_exception(error: BaseException) -> APIError:
    """What an exception from the request path means to a client: the checks of the classes and the engine
    raise ValueError (and TypeError) for what the request asked, which is the client's to fix."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, (ValueError, TypeError, FileNotFoundError)):
        return BadRequest(str(error))
    if isinstance(error, TimeoutError):
        return Timeout(str(error) or "the request timed out", code="timeout")
    return APIError(f"internal error: {type(error).__name__}: {error}")

"""Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), each with its HTTP status.

Everything a request can get wrong is one of these, raised where it is found (the in-process API raises
them too), so that the HTTP layer only turns them into responses: bad input is never a 500.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """A request that cannot be answered: `status` is its HTTP status, `param` the field at fault. A kind of
    error is a subclass that names its status (`class NotFound(APIError, status=404)`); its OpenAI `type`
    follows from it (the client's fault below 500, the server's from 500)."""

    status = 500
    kind = "server_error"

    def __init_subclass__(cls, status: int = 500, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status
        cls.kind = "invalid_request_error" if status < 500 else "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class BadRequest(APIError, status=400):
    """400: the request is malformed or asks for what cannot be done; `param` names the field."""


class Unauthorized(APIError, status=401):
    """401: no API key, or the wrong one."""

    def __init__(self) -> None:
        super().__init__("missing or invalid API key: send it as 'Authorization: Bearer KEY'", code="invalid_api_key")
        self.headers = {"WWW-Authenticate": "Bearer"}


class NotFound(APIError, status=404):
    """404: an unknown model or route."""


class NotAllowed(APIError, status=405):
    """405: a route asked with a method it does not answer."""


class TooLarge(APIError, status=413):
    """413: a request body over the server's limit."""


class Overloaded(APIError, status=503):
    """503: the model's queue is full; the client may retry after `Retry-After` seconds."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, code="server_overloaded")
        self.headers = {"Retry-After": str(retry_after_s)}


class Timeout(APIError, status=504):
    """504: the request ran past its `timeout` and was cancelled."""


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

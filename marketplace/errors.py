"""Domain errors that the HTTP layer turns into OpenAI-style error bodies.

Each error carries the HTTP status, an OpenAI error `type`, an optional `code`, and the request
field it concerns (`param`), so that a client can tell what to fix.
"""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequest(ApiError):
    status_code = 400


class PayloadTooLarge(ApiError):
    status_code = 413


class MethodNotAllowed(ApiError):
    status_code = 405


class Unauthorized(ApiError):
    status_code = 401
    error_type = "authentication_error"


class InsufficientBalance(ApiError):
    status_code = 402
    error_type = "insufficient_quota"


class Forbidden(ApiError):
    status_code = 403
    error_type = "permission_error"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict_error"


class RateLimited(ApiError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class UpstreamFailed(ApiError):
    status_code = 502
    error_type = "upstream_error"


class UpstreamUnavailable(ApiError):
    status_code = 503
    error_type = "upstream_error"

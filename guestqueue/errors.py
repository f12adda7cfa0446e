"""Errors a guest or an operator can see.

Every rejection maps to exactly one HTTP status and one ``code`` string::

    GuestQueueError
    ├── Rejected                  answered as JSON {"error", "code"} before a request is admitted
    │   ├── InvalidJSON           400 invalid_json
    │   ├── BodyTooLarge          413 body_too_large
    │   ├── UnsupportedMediaType  415 unsupported_media_type
    │   ├── InvalidField          422 invalid_field
    │   ├── IdempotencyMismatch   422 idempotency_mismatch (a key reused for another question)
    │   ├── Conflict              409 conflict        (the admin API: a line that exists, or comes from the file)
    │   ├── OffsetMismatch        409 offset_mismatch (a pull worker's chunks do not continue its answer; with offset)
    │   ├── LineFull              429 queue_full      (with Retry-After)
    │   ├── WaitTooLong           429 wait_too_long   (the line's max_predicted_wait_sec; with Retry-After)
    │   ├── ClientLimit           429 client_limit    (with Retry-After)
    │   ├── TooManyAttempts       429 too_many_attempts (wrong admin keys; with Retry-After)
    │   ├── ShuttingDown          503 shutting_down
    │   ├── LineClosed            503 line_closed     (the line's mode is reject; with its message)
    │   ├── NotFound              404 not_found
    │   │   └── UnknownLine       404 unknown_line
    │   ├── BodyTimeout           408 body_timeout    (the body did not arrive within GUEST_BODY_TIMEOUT_SEC)
    │   ├── ReceiptGone           410 receipt_expired (a pull worker's lease ran out, or its job ended)
    │   ├── Unauthorized          401 unauthorized
    │   ├── Forbidden             403 forbidden
    │   └── QuotaExceeded         403 quota_exceeded (an application's lines, keys or webhooks per line)
    ├── UpstreamFailure           ends an admitted request with a terminal `error` event
    │   ├── UpstreamUnavailable   upstream_unavailable (connection failed, 429, 502-504); retried
    │   ├── UpstreamError         upstream_error (other non-2xx, malformed or empty output);
    │   │                         retried only for 5xx
    │   ├── Interrupted           interrupted (a pull worker vanished mid-answer); never retried
    │   └── AnswerTooLarge        answer_too_large (past the line's max_answer_bytes); never retried
    └── StartupError              guestqueue cannot start as configured (one line, then exit 1)
        └── LogUnavailable        (requestlog/) GUEST_DB_PATH cannot be opened for writing

Lower-layer errors (httpx, json) are mapped to these at the boundary.
"""

from __future__ import annotations


class GuestQueueError(Exception):
    code = "internal_error"


class Rejected(GuestQueueError):
    status_code = 400
    counted = False  # already in the stats (admission rejections are counted where they happen)
    close_connection = False  # the request was not read to its end: the connection cannot be reused

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, str | int]:
        body: dict[str, str | int] = {"error": self.message, "code": self.code}
        if self.retry_after_s is not None:
            body["retry_after"] = self.retry_after_s  # the Retry-After header, readable cross-origin too
        return body


class InvalidJSON(Rejected):
    status_code, code = 400, "invalid_json"


class BodyTooLarge(Rejected):
    status_code, code = 413, "body_too_large"


class UnsupportedMediaType(Rejected):
    status_code, code = 415, "unsupported_media_type"


class InvalidField(Rejected):
    status_code, code = 422, "invalid_field"


class IdempotencyMismatch(Rejected):
    status_code, code = 422, "idempotency_mismatch"


class Conflict(Rejected):
    status_code, code = 409, "conflict"


class LineFull(Rejected):
    status_code, code = 429, "queue_full"


class WaitTooLong(Rejected):
    status_code, code = 429, "wait_too_long"
    guests_own = False  # refused by the guest's own max_wait_sec (not the line's ceiling)


class ClientLimit(Rejected):
    status_code, code = 429, "client_limit"


class TooManyAttempts(Rejected):
    status_code, code = 429, "too_many_attempts"


class ShuttingDown(Rejected):
    status_code, code = 503, "shutting_down"


class LineUnavailable(Rejected):
    """The shared line (Redis) cannot be reached: nothing is admitted until it answers again."""

    status_code, code = 503, "unavailable"


class LineClosed(Rejected):
    status_code, code = 503, "line_closed"


class NotFound(Rejected):
    status_code, code = 404, "not_found"


class UnknownLine(NotFound):
    code = "unknown_line"


class BodyTimeout(Rejected):
    status_code, code = 408, "body_timeout"
    close_connection = True


class Unauthorized(Rejected):
    status_code, code = 401, "unauthorized"


class Forbidden(Rejected):
    status_code, code = 403, "forbidden"


class QuotaExceeded(Rejected):
    status_code, code = 403, "quota_exceeded"


class OffsetMismatch(Rejected):
    """A pull worker's chunks (or ``complete``) do not continue the answer where the line has it:
    the body's ``offset`` says where to send from (as tus answers an upload at the wrong offset)."""

    status_code, code = 409, "offset_mismatch"

    def __init__(self, offset: int) -> None:
        super().__init__(f"The answer continues at chunk {offset}: send the chunks from there (offset={offset}).")
        self.offset = offset

    def body(self) -> dict[str, str | int]:
        return {**super().body(), "offset": self.offset}


class ReceiptGone(Rejected):
    status_code, code = 410, "receipt_expired"


class UpstreamFailure(GuestQueueError):
    """The upstream could not answer. ``guest_message`` is safe to show a guest."""

    retryable = False

    def __init__(
        self,
        guest_message: str,
        *,
        detail: str = "",
        retry_after_s: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(detail or guest_message)
        self.guest_message = guest_message
        self.detail = detail or guest_message
        self.retry_after_s = retry_after_s
        if retryable is not None:
            self.retryable = retryable


class UpstreamUnavailable(UpstreamFailure):
    code = "upstream_unavailable"
    retryable = True


class UpstreamError(UpstreamFailure):
    code = "upstream_error"


class Interrupted(UpstreamFailure):
    code = "interrupted"


class AnswerTooLarge(UpstreamFailure):
    code = "answer_too_large"
    MESSAGE = "The answer was longer than this line allows; it was cut short."


class StartupError(GuestQueueError):
    """guestqueue cannot start as configured: a port in use, a log file it cannot write.
    ``guestqueue serve`` prints the message (which names the setting) and exits 1."""

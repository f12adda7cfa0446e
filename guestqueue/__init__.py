"""guestqueue: a fair, bounded waiting line in front of a slow or rate-limited upstream."""

from .config import Settings, SettingsError
from .errors import (
    GuestQueueError,
    Rejected,
    UpstreamError,
    UpstreamFailure,
    UpstreamUnavailable,
)
from .limiter import PacingLimiter
from .upstream import Chunk, Workflow, WorkflowRequest
from .web.app import API_PREFIX, GuestQueue, create_app

__version__ = "0.1.0"

__all__ = [
    "API_PREFIX",
    "Chunk",
    "GuestQueue",
    "GuestQueueError",
    "PacingLimiter",
    "Rejected",
    "Settings",
    "SettingsError",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamUnavailable",
    "Workflow",
    "WorkflowRequest",
    "__version__",
    "create_app",
]

"""The OpenAI door (/v1): chat completions and models for the official SDKs. api.py reads the
request and finds the line; completion.py answers it (whole or streamed); errors.py speaks
OpenAI's error shape."""

from .api import OpenAIApi

__all__ = ["OpenAIApi"]

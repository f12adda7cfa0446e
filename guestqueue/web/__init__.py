"""The web layer: the HTTP API, the SSE stream, the WebSocket, the pages, the uvicorn edge.

Nothing outside it imports it but the entry points (``guestqueue/__init__.py``, ``cli.py``).
"""

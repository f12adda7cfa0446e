"""A checkout page behind a guestqueue waiting room (an admission line).

guestqueue (the line ``shop``, from examples/waiting_room.toml):

    GUEST_TOKEN_SECRET=change-me-to-32-or-more-random-characters \\
    GUEST_CORS_ORIGINS=http://127.0.0.1:9000 GUEST_CONFIG=examples/waiting_room.toml guestqueue serve

this app, on another port, sharing the secret:

    GUEST_TOKEN_SECRET=change-me-to-32-or-more-random-characters \\
    python examples/checkout.py --port 9000 --queue http://127.0.0.1:8000 --line shop

(``--queue`` and ``--line`` default to ``GUESTQUEUE_URL`` and ``GUESTQUEUE_LINE``, then to the
values above; ``uvicorn examples.checkout:app --port 9000`` reads the same variables.) On other
ports, change ``redirect_url`` in the line and ``GUEST_CORS_ORIGINS`` to this app's address.

Open http://127.0.0.1:9000/: the page joins the line, shows its place, and is
sent to /checkout with its token when admitted. /checkout checks the token
offline (PyJWT, the shared secret); "Pay" ends the session, which frees the
slot for the next guest at once (else it frees at the token's expiry).
"""

from __future__ import annotations

import argparse
import html
import os
from urllib.parse import parse_qs

import httpx
import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

SECRET = os.environ.get("GUEST_TOKEN_SECRET", "")
QUEUE = os.environ.get("GUESTQUEUE_URL", "http://127.0.0.1:8000")
LINE = os.environ.get("GUESTQUEUE_LINE", "shop")

WAITING_PAGE = """<!doctype html><meta charset="utf-8"><title>Waiting room</title>
<h1>You are in line</h1><p id="place">Joining…</p>
<script>
const line = "__QUEUE__/api/v1/lines/__LINE__";
async function wait() {
  let state = await (await fetch(line + "/join", {method: "POST"})).json();
  while (state.status === "queued" || state.status === "processing") {
    document.getElementById("place").textContent =
      `Place ${state.queue_position ?? 1}, about ${Math.round(state.estimated_wait_sec ?? 0)} s`;
    await new Promise(r => setTimeout(r, (state.poll_after_sec ?? 1) * 1000));
    state = await (await fetch(line + "/join/" + state.request_id)).json();
  }
  if (state.status === "admitted") location.href = "/checkout?token=" + encodeURIComponent(state.token);
  else document.getElementById("place").textContent = state.error || "Please try again later.";
}
wait();
</script>"""


def claims_of(token: str) -> dict[str, object] | None:
    """The token's claims if guestqueue signed it for our line and it has not expired."""
    try:
        # audience: a token guestqueue signed for another line is refused.
        claims: dict[str, object] = jwt.decode(token, SECRET, algorithms=["HS256"], audience=LINE)
    except jwt.InvalidTokenError:
        return None
    return claims if claims.get("line") == LINE else None


async def waiting(request: Request) -> Response:
    return HTMLResponse(WAITING_PAGE.replace("__QUEUE__", QUEUE).replace("__LINE__", LINE))


async def checkout(request: Request) -> Response:
    token = request.query_params.get("token", "")
    claims = claims_of(token)
    if claims is None:
        return HTMLResponse('<p>Please <a href="/">wait your turn</a>.</p>', status_code=403)
    return HTMLResponse(
        f'<h1>Checkout</h1><form method="post" action="/pay"><input type="hidden" name="token" '
        f'value="{html.escape(token)}"><button>Pay</button></form>'
    )


async def pay(request: Request) -> Response:
    form = parse_qs((await request.body()).decode())  # the form's one field (no multipart needed)
    claims = claims_of(form.get("token", [""])[0])
    if claims is None:
        return JSONResponse({"error": "not admitted"}, status_code=403)
    async with httpx.AsyncClient(timeout=10) as client:  # done: the next guest may come in
        await client.post(f"{QUEUE}/api/v1/lines/{LINE}/sessions/{claims['sub']}/complete")
    return HTMLResponse("<h1>Thank you!</h1>")


app = Starlette(routes=[Route("/", waiting), Route("/checkout", checkout), Route("/pay", pay, methods=["POST"])])


def main(argv: list[str] | None = None) -> None:
    global QUEUE, LINE  # the routes above read them
    parser = argparse.ArgumentParser(description="A checkout page behind a guestqueue waiting room.")
    parser.add_argument("--port", type=int, default=9000, help="this app's port (default 9000)")
    parser.add_argument("--queue", default=QUEUE, help="guestqueue's address [GUESTQUEUE_URL, default %(default)s]")
    parser.add_argument("--line", default=LINE, help="the waiting room's line [GUESTQUEUE_LINE, default %(default)s]")
    args = parser.parse_args(argv)
    QUEUE, LINE = args.queue.rstrip("/"), args.line
    uvicorn.run(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()

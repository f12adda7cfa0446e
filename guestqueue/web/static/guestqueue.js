// guestqueue browser client: ask a question, hear your place in line, read the answer as it streams.
//
//   import { GuestQueueClient } from "/api/v1/guest/static/guestqueue.js";
//   const client = new GuestQueueClient();                // same origin, /api/v1/guest
//   const request = client.ask("How does the line work?", { on: {
//     queued: (d) => show(`You are number ${d.queue_position} in line`),
//     answer_chunk: (text, answer) => render(answer),
//     error: (d) => show(d.error),
//   }});
//   const ending = await request.done;                     // never rejects
//   request.cancel();                                      // leave the line (DELETE /chat/{id})
//
// Plain ES module, no build step, no dependencies. Types: guestqueue.d.ts.
//
// Why not EventSource: it can only GET, and a question is POSTed. So the SSE
// stream is read with fetch and parsed here, per the WHATWG rules, and a dropped
// stream is resumed with GET /chat/{id}/events and Last-Event-ID, as EventSource
// would (the server keeps the guest's place for GUEST_RECONNECT_GRACE_SEC).

export const DEFAULT_BASE_URL = "/api/v1/guest";
export const TERMINAL_EVENTS = Object.freeze(["workflow_complete", "timeout", "error", "admitted"]);

/**
 * Incremental parser for a text/event-stream, per the WHATWG HTML standard
 * ("Parsing an event stream"): lines end in CRLF, LF or CR (also when a CRLF is
 * split across two chunks), `data:` lines join with LF, `:` lines are comments,
 * an `id:` containing NUL is ignored, and an event without a closing blank line
 * (the stream ended mid-event) is never dispatched.
 */
export class SSEParser {
  /**
   * @param {(message: {type: string, data: string, lastEventId: string}) => void} onMessage
   * @param {{onComment?: (text: string) => void, onRetry?: (ms: number) => void}} [options]
   */
  constructor(onMessage, { onComment, onRetry } = {}) {
    this.onMessage = onMessage;
    this.onComment = onComment || null;
    this.onRetry = onRetry || null;
    /** The id of the last dispatched event: what a reconnect sends as Last-Event-ID. */
    this.lastEventId = "";
    this._idBuffer = "";
    this._data = "";
    this._event = "";
    this._pending = "";
    this._afterCR = false;
    this._started = false;
  }

  /** Feed the next piece of decoded text (any size, cut anywhere). */
  feed(chunk) {
    if (chunk === "") return;
    if (!this._started) {
      this._started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1); // one leading BOM is ignored
    }
    // A CR ended the previous chunk: it was a line end, and an LF right after it belongs to it.
    if (this._afterCR && chunk[0] === "\n") chunk = chunk.slice(1);
    this._afterCR = false;
    const text = this._pending + chunk;
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lineEnd.exec(text)) !== null) {
      if (match[0] === "\r" && match.index === text.length - 1) this._afterCR = true;
      this._line(text.slice(start, match.index));
      start = match.index + match[0].length;
    }
    this._pending = text.slice(start);
  }

  _line(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    if (line[0] === ":") {
      if (this.onComment) this.onComment(line.slice(1));
      return;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") this._event = value;
    else if (field === "data") this._data += value + "\n";
    else if (field === "id") {
      if (!value.includes("\0")) this._idBuffer = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value) && this.onRetry) this.onRetry(parseInt(value, 10));
    }
  }

  _dispatch() {
    this.lastEventId = this._idBuffer;
    if (this._data === "") {
      this._event = "";
      return;
    }
    const message = { type: this._event || "message", data: this._data.slice(0, -1), lastEventId: this.lastEventId };
    this._data = "";
    this._event = "";
    this.onMessage(message);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function newKey() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID(); // secure contexts only
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A client for one guestqueue API (by default the page's own origin, /api/v1/guest). */
export class GuestQueueClient {
  /**
   * @param {{baseUrl?: string, fetch?: typeof fetch, headers?: Record<string, string>,
   *          maxReconnects?: number, reconnectDelayMs?: number}} [options]
   */
  constructor({ baseUrl = DEFAULT_BASE_URL, fetch: fetchImpl, headers = {}, maxReconnects = 5,
                reconnectDelayMs = 500 } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    this.headers = headers;
    this.maxReconnects = maxReconnects;
    this.reconnectDelayMs = reconnectDelayMs;
  }

  /**
   * Ask a question. Returns at once; events arrive through `on` handlers.
   * @param {string} query
   * @param {{parameters?: object, sessionId?: string, on?: object}} [options]
   * @returns {GuestRequest}
   */
  ask(query, { parameters, sessionId, on = {} } = {}) {
    const body = { query };
    if (parameters !== undefined) body.parameters = parameters;
    if (sessionId !== undefined) body.session_id = sessionId;
    return new GuestRequest(this, body, on);
  }
}

/** One question on its way through the line. */
export class GuestRequest {
  constructor(client, body, on) {
    this.client = client;
    this.on = on;
    /** @type {string|null} */
    this.requestId = null;
    this.lastEventId = "";
    this.answer = "";
    this.reconnects = 0;
    /** @type {{event: string, data: any} | null} */
    this.ending = null;
    this._cancelled = false;
    this._abort = new AbortController();
    this.done = new Promise((resolve) => { this._resolve = resolve; });
    this._run(body);
  }

  /** Leave the line, or stop an answer being written. The stream ends with `error` / `cancelled`. */
  async cancel() {
    if (this.ending) return;
    this._cancelled = true;
    if (this.requestId === null) {
      this._abort.abort(); // not admitted yet: dropping the connection is enough
      this._finish("error", { error: "You left the line.", code: "cancelled" });
      return;
    }
    try {
      await this.client.fetch(`${this.client.baseUrl}/chat/${encodeURIComponent(this.requestId)}`,
                              { method: "DELETE", headers: this.client.headers });
    } catch (_) {
      // Unreachable server: it lets the ticket go after the reconnect grace anyway.
    }
    if (!this._streaming) this._finish("error", { request_id: this.requestId, error: "You left the line.",
                                                  code: "cancelled" });
  }

  _emit(name, ...args) {
    const handler = this.on[name];
    if (typeof handler === "function") {
      try {
        handler(...args);
      } catch (exc) {
        console.error(`guestqueue: the ${name} handler failed`, exc); // a page bug must not stop the stream
      }
    }
  }

  _finish(event, data) {
    if (this.ending) return;
    this.ending = { event, data };
    this._abort.abort();
    this._resolve(this.ending);
  }

  async _run(body) {
    const { client } = this;
    // One key per question: if the POST's answer is lost on the way, sending it again (same key)
    // reaches the same request instead of asking twice.
    const idempotencyKey = newKey();
    let response;
    for (let attempt = 0; ; attempt += 1) {
      try {
        response = await client.fetch(`${client.baseUrl}/chat`, {
          method: "POST",
          headers: { "Content-Type": "application/json", Accept: "text/event-stream",
                     "Idempotency-Key": idempotencyKey, ...client.headers },
          body: JSON.stringify(body),
          signal: this._abort.signal,
        });
        break;
      } catch (exc) {
        if (this.ending) return;
        if (attempt >= client.maxReconnects) {
          const data = { error: "Could not reach the service.", code: "network_error", detail: String(exc) };
          this._emit("error", data);
          this._finish("error", data);
          return;
        }
        await sleep(Math.min(client.reconnectDelayMs * 2 ** attempt, 5000));
        if (this.ending) return;
      }
    }
    if (!response.ok) {
      await this._rejected(response);
      return;
    }
    this.requestId = response.headers.get("X-Request-ID");
    let retryMs = null;
    let attempt = 0;
    for (;;) {
      const before = this.lastEventId;
      await this._consume(response, (ms) => { retryMs = ms; });
      if (this.ending) return;
      if (this.lastEventId !== before) attempt = 0; // it made progress: start counting again
      if (this._cancelled || this.requestId === null || attempt >= client.maxReconnects) break;
      attempt += 1;
      this.reconnects += 1;
      const delayMs = retryMs ?? Math.min(client.reconnectDelayMs * 2 ** (attempt - 1), 5000);
      this._emit("reconnecting", { attempt, delayMs, lastEventId: this.lastEventId });
      await sleep(delayMs);
      if (this._cancelled || this.ending) break;
      try {
        response = await client.fetch(`${client.baseUrl}/chat/${encodeURIComponent(this.requestId)}/events`, {
          headers: { Accept: "text/event-stream", "Last-Event-ID": this.lastEventId, ...client.headers },
          signal: this._abort.signal,
        });
      } catch (_) {
        response = null; // still unreachable: try again
        continue;
      }
      if (response.status === 404) break;
      if (!response.ok) response = null;
    }
    if (this.ending) return;
    const data = this._cancelled
      ? { request_id: this.requestId, error: "You left the line.", code: "cancelled" }
      : { request_id: this.requestId, error: "The connection was lost.", code: "connection_lost" };
    this._emit("error", data);
    this._finish("error", data);
  }

  async _consume(response, onRetry) {
    if (!response || !response.body) return;
    const parser = new SSEParser((message) => this._message(message), { onRetry });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    this._streaming = true;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(decoder.decode(value, { stream: true }));
        if (this.ending) break;
      }
    } catch (_) {
      // The connection dropped mid-stream: the caller reconnects from lastEventId.
    } finally {
      this._streaming = false;
      reader.cancel().catch(() => {});
    }
  }

  _message(message) {
    if (this.ending) return;
    let name = message.type;
    let data = message.data;
    try {
      const envelope = JSON.parse(message.data);
      if (envelope && typeof envelope === "object" && "event" in envelope) {
        name = envelope.event;
        data = envelope.data;
      }
    } catch (_) {
      // not a guestqueue envelope: pass the raw text on
    }
    this.lastEventId = message.lastEventId;
    if (this.requestId === null && data && typeof data === "object" && data.request_id) {
      this.requestId = data.request_id;
    }
    this._emit("event", name, data, message.lastEventId);
    if (name === "answer_chunk") {
      this.answer += data;
      this._emit("answer_chunk", data, this.answer);
    } else {
      this._emit(name, data);
    }
    if (TERMINAL_EVENTS.includes(name)) this._finish(name, data);
  }

  async _rejected(response) {
    let data;
    try {
      data = await response.json();
    } catch (_) {
      data = { error: `The service answered ${response.status}.`, code: "http_error" };
    }
    data = { ...data, status: response.status };
    // The body's retry_after; the header only where CORS exposes it (or the same origin).
    const retryAfter = parseInt(response.headers.get("Retry-After") || "", 10);
    if (typeof data.retry_after !== "number" && !Number.isNaN(retryAfter)) data.retry_after = retryAfter;
    this._emit("rejected", data);
    this._finish("rejected", data);
  }
}

// @microsoft/fetch-event-source against guestqueue, with the first stream cut after its first
// answer chunk (as a flaky network would). The library retries by sending the same POST again,
// with the same headers (our Idempotency-Key) plus Last-Event-ID.
//   node fetch_event_source_resume.mjs BASE_URL  ->  prints {"events": [...], "posts": N} as JSON
import { fetchEventSource } from "@microsoft/fetch-event-source";

// A browser library: it schedules retries on window.setTimeout and unhooks a document listener.
globalThis.window ??= globalThis;
globalThis.document ??= { hidden: false, addEventListener() {}, removeEventListener() {} };

const base = process.argv[2];
let posts = 0;

// A fetch whose first response body breaks off right after the first answer chunk.
async function flakyFetch(url, init) {
  posts += 1;
  const response = await fetch(url, init);
  if (posts > 1) return response;
  const reader = response.body.getReader();
  let seen = "";
  const body = new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) return controller.close();
      controller.enqueue(value);
      seen += new TextDecoder().decode(value);
      if (seen.includes("event: answer_chunk")) {
        reader.cancel();
        controller.error(new TypeError("network connection lost"));
      }
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

const events = [];
const ctrl = new AbortController();
await fetchEventSource(`${base}/chat`, {
  method: "POST",
  headers: { "Content-Type": "application/json", "Idempotency-Key": "fes-" + Date.now() },
  body: JSON.stringify({ query: "resume me" }),
  fetch: flakyFetch,
  openWhenHidden: true,
  signal: ctrl.signal,
  onmessage(msg) {
    if (!msg.data) return; // this library dispatches data-less blocks (our pings) too
    events.push({ id: msg.id, event: msg.event, data: JSON.parse(msg.data).data });
    if (["workflow_complete", "timeout", "error"].includes(msg.event)) ctrl.abort();
  },
  onclose() {
    if (!ctrl.signal.aborted) throw new Error("stream closed before a terminal event");
  },
  onerror(err) {
    if (posts > 3) throw err; // give up: the test fails on the missing terminal event
    return 100; // retry after 100 ms
  },
});
console.log(JSON.stringify({ events, posts }));

// The `eventsource` package (the WHATWG EventSource for Node) following one request through nginx
// while the guestqueue instances behind it restart: it must reconnect by itself (with
// Last-Event-ID) and hear the answer exactly once.
//   node eventsource_follow.mjs EVENTS_URL TIMEOUT_MS [PROGRESS_FILE]  ->  prints {"events": [...], "connects": N}
// PROGRESS_FILE, if given, gets a line "connect" per connection tried and "event" per event heard,
// as they happen (the test waits on it).
import { appendFileSync } from "node:fs";
import { EventSource } from "eventsource";

const [url, timeoutMs, progress] = [process.argv[2], Number(process.argv[3] || 60000), process.argv[4]];
const tell = (what) => { if (progress) appendFileSync(progress, what + "\n"); };
let connects = 0;
const events = [];
const source = new EventSource(url, {
  fetch: (input, init) => {
    connects += 1;
    tell("connect");
    return fetch(input, init);
  },
});
let timer;
const done = new Promise((resolve) => {
  for (const name of ["queued", "processing", "answer_chunk", "reconnect", "workflow_complete", "error", "timeout"]) {
    source.addEventListener(name, (e) => {
      if (e.data === undefined) return; // EventSource's own "error": a dropped connection, not ours
      events.push({ id: e.lastEventId, event: name, data: JSON.parse(e.data).data });
      tell("event");
      if (["workflow_complete", "error", "timeout"].includes(name)) resolve();
    });
  }
  timer = setTimeout(resolve, timeoutMs);
});
source.onerror = () => {}; // a closed stream is reconnected by the EventSource itself
await done;
clearTimeout(timer); // a pending timer would keep node running
source.close();
console.log(JSON.stringify({ events, connects }));

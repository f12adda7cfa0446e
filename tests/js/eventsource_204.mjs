// The `eventsource` package (the WHATWG EventSource for Node) reading a finished request and
// NOT closing on the terminal event, as a careless page would: it reconnects with Last-Event-ID,
// and guestqueue's 204 must make it stop.
//   node eventsource_204.mjs EVENTS_URL WAIT_MS  ->  prints {"events": [...], "connects": N, "readyState": S}
import { EventSource } from "eventsource";

const [url, waitMs] = [process.argv[2], Number(process.argv[3] || 5000)];
let connects = 0;
const events = [];
const source = new EventSource(url, {
  fetch: (input, init) => {
    connects += 1;
    return fetch(input, init);
  },
});
for (const name of ["queued", "processing", "answer_chunk", "workflow_complete"]) {
  source.addEventListener(name, (e) => events.push({ id: e.lastEventId, event: name }));
}
source.onerror = () => {}; // a 204 reports one error, then the source is closed for good
await new Promise((resolve) => setTimeout(resolve, waitMs));
console.log(JSON.stringify({ events, connects, readyState: source.readyState }));
source.close();

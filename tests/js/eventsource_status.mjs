// The `eventsource` package reading guestqueue's live status stream, as a monitor would.
//   node eventsource_status.mjs STREAM_URL COUNT  ->  prints {"statuses": [...]} once COUNT arrived
import { EventSource } from "eventsource";

const [url, count] = [process.argv[2], Number(process.argv[3] || 3)];
const statuses = [];
const source = new EventSource(url);
source.addEventListener("status", (e) => {
  statuses.push({ at: Date.now(), status: JSON.parse(e.data) });
  if (statuses.length >= count) {
    source.close();
    console.log(JSON.stringify({ statuses }));
  }
});
source.onerror = (e) => {
  console.error("eventsource error", e.message ?? e);
  process.exit(1);
};

// The official OpenAI JavaScript SDK against guestqueue's /v1 (tests/test_js_clients.py).
// node openai_sdk.mjs BASE_URL MODE   MODE: answer | limited   prints one JSON object
import OpenAI, { RateLimitError } from "openai";

const [baseURL, mode] = process.argv.slice(2);
const messages = [{ role: "user", content: "same question" }];

if (mode === "answer") {
  const client = new OpenAI({ baseURL, apiKey: "sk-none" });
  const whole = await client.chat.completions.create({ model: "guest", messages });
  const stream = await client.chat.completions.create({ model: "guest", messages, stream: true });
  let streamed = "";
  const finish = [];
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      streamed += choice.delta?.content ?? "";
      if (choice.finish_reason) finish.push(choice.finish_reason);
    }
  }
  const models = (await client.models.list()).data.map((m) => m.id);
  console.log(JSON.stringify({ whole: whole.choices[0].message.content, streamed, finish, models }));
} else if (mode === "limited") {
  const client = new OpenAI({ baseURL, apiKey: "sk-none", maxRetries: 0 });
  try {
    await client.chat.completions.create({ model: "guest", messages });
    console.log(JSON.stringify({ error: null }));
  } catch (err) {
    console.log(JSON.stringify({ error: err.constructor.name, rateLimit: err instanceof RateLimitError,
      status: err.status, code: err.code, retryAfterMs: err.headers?.get?.("retry-after-ms") ?? null }));
  }
}

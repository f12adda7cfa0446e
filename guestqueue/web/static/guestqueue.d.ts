// Types for guestqueue.js (the browser client). Plain declarations, no build step needed.

export declare const DEFAULT_BASE_URL: "/api/v1/guest";
export declare const TERMINAL_EVENTS: readonly ["workflow_complete", "timeout", "error", "admitted"];

export interface SSEMessage {
  /** The `event:` field, or "message" when there was none. */
  type: string;
  /** The `data:` lines joined with "\n". */
  data: string;
  lastEventId: string;
}

export declare class SSEParser {
  constructor(
    onMessage: (message: SSEMessage) => void,
    options?: { onComment?: (text: string) => void; onRetry?: (ms: number) => void },
  );
  /** The id of the last dispatched event (sent as Last-Event-ID on reconnect). */
  lastEventId: string;
  /** Feed decoded text, cut anywhere (even inside a line or a CRLF). */
  feed(chunk: string): void;
}

export interface Queued {
  request_id: string;
  /** 1 = next to start. */
  queue_position: number;
  total_ahead: number;
  queue_size: number;
  estimated_wait_sec: number;
  /** p10 and p90 of the wait: 8 guests in 10 start inside it. */
  estimated_wait_range_sec: [number, number];
}
export interface Processing { request_id: string }
export interface WorkflowComplete {
  request_id: string;
  answer: string;
  suggested_questions: string[];
  cached: boolean;
  duration_ms: number;
}
/** `code`: `timeout` (the call took too long) or `deadline` (the guest's own max_wait_sec ran out in line). */
export interface Timeout { request_id: string; error: string; code: "timeout" | "deadline"; fallback: string }
/** A terminal error event, or one made by the client: `network_error`, `connection_lost`, `cancelled`. */
export interface ErrorData { request_id?: string | null; error: string; code: string; detail?: string }
/** The request was refused before it was admitted (400, 413, 415, 422, 429, 503). */
export interface Rejection {
  error: string;
  code: string;
  status: number;
  retry_after?: number;
}

export interface Handlers {
  queued?(data: Queued): void;
  processing?(data: Processing): void;
  /** `answer` is everything received so far. */
  answer_chunk?(text: string, answer: string): void;
  workflow_complete?(data: WorkflowComplete): void;
  timeout?(data: Timeout): void;
  error?(data: ErrorData): void;
  /** An admission line let the guest in: its token, to show the protected page. */
  admitted?(data: Admitted): void;
  rejected?(data: Rejection): void;
  reconnecting?(info: { attempt: number; delayMs: number; lastEventId: string }): void;
  /** Every event, before its own handler. */
  event?(name: string, data: unknown, id: string): void;
}

export type Ending =
  | { event: "workflow_complete"; data: WorkflowComplete }
  | { event: "timeout"; data: Timeout }
  | { event: "error"; data: ErrorData }
  | { event: "admitted"; data: Admitted }
  | { event: "rejected"; data: Rejection };

export interface Admitted {
  request_id: string;
  /** A JWT (claims sub, line, iat, exp, jti) the protected application checks. */
  token: string;
  /** Unix seconds: the session (and its token) ends then. */
  expires_at: number;
  redirect_url?: string;
}

export interface ClientOptions {
  /** Default "/api/v1/guest" on the page's origin. */
  baseUrl?: string;
  fetch?: typeof fetch;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** Attempts to resume a dropped stream before giving up (default 5). */
  maxReconnects?: number;
  /** First reconnect delay, doubled each attempt up to 5 s (default 500); a `retry:` field wins. */
  reconnectDelayMs?: number;
}

export declare class GuestQueueClient {
  constructor(options?: ClientOptions);
  baseUrl: string;
  ask(
    query: string,
    options?: { parameters?: Record<string, unknown>; sessionId?: string; on?: Handlers },
  ): GuestRequest;
}

export declare class GuestRequest {
  /** Known once the server answered (X-Request-ID), else null. */
  requestId: string | null;
  lastEventId: string;
  /** The answer so far. */
  answer: string;
  /** How many times the stream was resumed. */
  reconnects: number;
  ending: Ending | null;
  /** Resolves once, with how the request ended; never rejects. */
  done: Promise<Ending>;
  /** Leave the line or stop the answer (DELETE /chat/{id}). */
  cancel(): Promise<void>;
}

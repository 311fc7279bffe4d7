// Type declarations for axrisi-client.js, the browser client of Axrisi Stream.
//
// Written by hand from the module's JSDoc and the service's contract (shared/API.md), so that the
// payloads have the contract's shapes. tests/test_client_package.py keeps them honest: every
// export of the module is declared here and nothing here is declared that the module lacks, the
// word `any` appears nowhere in this file, and a strict TypeScript consumer compiles against the
// packed package (client/consumer-check). Open-ended shapes are `unknown`.
//
// The module uses `fetch`, `AbortSignal`, `ReadableStream` and `TextDecoder`: compile with the
// "DOM" or the "WebWorker" lib (an extension service worker is a worker).

/** The reconnection delay when the server sent no `retry:` field, in milliseconds (1000). */
export declare const DEFAULT_RETRY_MS: number;
/** The longest wait between two reconnection attempts, in milliseconds (30000). */
export declare const MAX_RETRY_DELAY_MS: number;
/** How often `keepAlive` calls `chrome.runtime.getPlatformInfo()`, in milliseconds (25000). */
export declare const KEEPALIVE_INTERVAL_MS: number;
/** The prefix of the `chrome.storage.session` keys of running streams (`"axrisi-stream:"`). */
export declare const STREAM_KEY_PREFIX: string;

// ---- Server-Sent Events ------------------------------------------------------------------------

/** One parsed Server-Sent Event. */
export interface SSEEvent {
  /** The last event id when it was dispatched (`"<streamId>-<n>"` from this service). */
  id: string;
  /** The event type: `"message"` unless an `event:` field named another (`"error"` here). */
  event: string;
  /** The data lines joined with `\n` (one line of compact JSON from this service). */
  data: string;
}

/** Hooks of {@link SSEParser}. */
export interface SSEParserHooks {
  /** Called with each valid `retry:` value, in milliseconds. */
  onRetry?: ((ms: number) => void) | undefined;
  /** Called with each comment's text (after the colon), e.g. `" ping"` for a heartbeat. */
  onComment?: ((text: string) => void) | undefined;
}

/**
 * An incremental `text/event-stream` parser following the HTML standard's event stream
 * interpretation, whatever the chunk boundaries (a CRLF or a UTF-8 character split across two
 * chunks included). An event left without its blank line at the end of the stream is discarded,
 * its `id:` with it.
 */
export declare class SSEParser {
  constructor(hooks?: SSEParserHooks);
  /** The last valid `retry:` value in milliseconds, or `null` when none arrived. */
  readonly retry: number | null;
  /**
   * The last event id as of the last blank line (the standard's "last event ID string"): the
   * value to send as `Last-Event-ID` when reconnecting. It persists across events and across
   * {@link SSEParser.end}. Setting it sets the id that later events carry until an `id:` field.
   */
  get lastEventId(): string;
  set lastEventId(value: string);
  /** Feed the next piece of decoded text; returns the events it completed, in order. */
  feed(text: string): SSEEvent[];
  /** Feed raw bytes, decoded as UTF-8 in stream mode; `null` ends the stream like `end()`. */
  feedBytes(bytes: Uint8Array | null): SSEEvent[];
  /**
   * The end of the stream: flushes the decoder and discards what never ended (a last line
   * without its line end, a block without its blank line, `id:` included). Returns no events by
   * the standard's rules. The parser can then be reused for a new connection.
   */
  end(): SSEEvent[];
}

// ---- The contract's payloads (shared/API.md) ----------------------------------------------------

/** A command from `GET /api/commands`; the service may offer more than these. */
export type CommandName = "summarize" | "explain" | "translate" | "rewrite" | "custom" | (string & {});

/** The first event's data. Extra fields are allowed by the contract, hence the index signature. */
export interface TitlePayload {
  title: string;
  commandId: number;
  readonly [field: string]: unknown;
}

/** A content event's data: `content` strings, joined in order, are the model's output. */
export interface ContentPayload {
  content: string;
  commandId: number;
  readonly [field: string]: unknown;
}

/** A reasoning event's data (with `reasoning: true`): the model's thinking, in order, never the answer. */
export interface ReasoningPayload {
  reasoning: string;
  commandId: number;
  readonly [field: string]: unknown;
}

/** What a snapshot folds: the title (when its event was folded), the content, the reasoning. */
export interface Snapshot {
  /** Present when the title event is among the folded events. */
  title?: string;
  /** The folded content events' `content`, joined. */
  content: string;
  /** Present when reasoning events were folded: their `reasoning`, joined. */
  reasoning?: string;
  readonly [field: string]: unknown;
}

/**
 * The data of a resume's catch-up event (`?catchup=snapshot`): the kept events after the resume's
 * position folded into one, carrying the id of the last one it covers.
 */
export interface SnapshotPayload {
  snapshot: Snapshot;
  commandId: number;
  readonly [field: string]: unknown;
}

/** Token counts of a finished stream, as the upstream reported them. */
export interface Usage {
  promptTokens: number;
  /** The answer's tokens, the reasoning's included. */
  completionTokens: number;
  /** The reasoning's tokens, where the upstream reports them. */
  reasoningTokens?: number;
  readonly [field: string]: unknown;
}

/** The data of the terminal `done` event. */
export interface DonePayload {
  done: true;
  commandId: number;
  finishReason: string;
  /** Where known. */
  usage?: Usage;
  /** The model that answered (the fallback's, when the primary upstream failed). */
  model?: string;
  readonly [field: string]: unknown;
}

/** The data of a terminal `event: error`. */
export interface ErrorPayload {
  error: string;
  code: StreamErrorCode | (string & {});
  commandId: number;
  readonly [field: string]: unknown;
}

/**
 * Any event's data, for readers of {@link streamEvents}:
 * `const payload = JSON.parse(event.data) as StreamPayload`.
 */
export type StreamPayload =
  | TitlePayload
  | ContentPayload
  | ReasoningPayload
  | SnapshotPayload
  | DonePayload
  | ErrorPayload;

// ---- Errors ----------------------------------------------------------------------------------------

/** The codes of the contract's HTTP error answers. */
export type HttpErrorCode =
  | "invalid_json"
  | "invalid_request"
  | "unknown_command"
  | "unauthorized"
  | "not_found"
  | "too_large"
  | "unsupported_media_type"
  | "rate_limited"
  | "too_many_streams"
  | "quota_exceeded"
  | "unavailable";

/** The codes of a stream's terminal `event: error`. */
export type StreamErrorCode =
  | "upstream_error"
  | "upstream_timeout"
  | "quota_exceeded"
  | "shutting_down"
  | "cancelled"
  | "internal";

/**
 * The codes the client makes itself: a connection that failed or could not be resumed, an answer
 * that is not an event stream, and an HTTP error whose body had no code (`"http_502"`).
 */
export type ClientErrorCode = "network_error" | "bad_response" | `http_${number}`;

/** An {@link AxrisiError}'s code: one of the above, or a code of a newer service. */
export type AxrisiErrorCode = HttpErrorCode | StreamErrorCode | ClientErrorCode | (string & {});

/** The constructor argument of {@link AxrisiError}. */
export interface AxrisiErrorDetails {
  status?: number | undefined;
  code: AxrisiErrorCode;
  error: string;
  retryAfter?: number | null | undefined;
  commandId?: number | null | undefined;
  requestId?: string | null | undefined;
}

/** What had arrived before a stream failed. */
export interface PartialResult {
  title: string;
  content: string;
  reasoning: string;
  commandId: number | null;
}

/**
 * An error of the Axrisi API, whichever way it came: an HTTP error answer, a terminal
 * `event: error` in the stream (`status` 200), or a failed connection (`status` 0,
 * `code` `"network_error"`).
 */
export declare class AxrisiError extends Error {
  constructor(details: AxrisiErrorDetails);
  readonly name: "AxrisiError";
  /** The HTTP status; 200 for an error event in a stream, 0 without an answer. */
  readonly status: number;
  /** The contract's machine-readable code, e.g. `"unauthorized"`, `"upstream_error"`. */
  readonly code: AxrisiErrorCode;
  /** The sentence a person can act on. */
  readonly error: string;
  /** Seconds to wait before trying again (`Retry-After`), or `null`. */
  readonly retryAfter: number | null;
  /** The stream's `commandId` for an error that ended a stream, else `null`. */
  readonly commandId: number | null;
  /** The response's `X-Request-ID`, when the header was readable. */
  readonly requestId: string | null;
  /** What had arrived before the error; set by {@link streamCommand}, else `null`. */
  partial: PartialResult | null;
}

// ---- Streaming -------------------------------------------------------------------------------------

/** What {@link StreamOptions.onOpen} receives. */
export interface OpenInfo {
  status: number;
  /** `false` for `POST /api/run`, `true` for a resume (`GET /api/streams/<id>`). */
  resumed: boolean;
  requestId: string | null;
}

/** What {@link StreamOptions.onReconnect} receives. */
export interface ReconnectInfo {
  /** Attempts in a row without a new event, from 1. */
  attempt: number;
  /** Milliseconds to wait before this attempt. */
  delay: number;
  /** The id sent as `Last-Event-ID`. */
  lastEventId: string;
  /** Why the connection ended: an {@link AxrisiError}, a network `TypeError`, or an `Error`. */
  cause: unknown;
}

/** Options of {@link streamEvents} and {@link streamCommand}. */
export interface StreamOptions {
  /** The service's origin; defaults to the current origin. Required in extension service workers. */
  baseUrl?: string | undefined;
  /** The bearer JWT, or a function that returns it (asked again before each reconnection). */
  token: string | (() => string | Promise<string>);
  command: CommandName;
  /** The text to work on. */
  text: string;
  /** The source's title. */
  title?: string | undefined;
  /** The target language (`translate`). */
  language?: string | undefined;
  /** The instruction (`custom`). */
  instruction?: string | undefined;
  /**
   * `true`: the service generates the answer to its end whether or not anyone reads it; find it
   * later with {@link listStreams}, read it with {@link resumeStream}. Sent only when `true`.
   */
  background?: boolean | undefined;
  /**
   * `true`: relay a reasoning model's thinking as reasoning events (`onReasoning`); the content
   * stays exactly the answer. Sent only when `true`.
   */
  reasoning?: boolean | undefined;
  /**
   * Resume with `?catchup=snapshot`: what was missed while disconnected comes as one
   * {@link SnapshotPayload} event. Default: on for {@link streamCommand}, {@link resumeStream} and
   * {@link resumePending} (which apply it to their callbacks), off for {@link streamEvents}.
   */
  snapshot?: boolean | undefined;
  /**
   * Aborting cancels the request (the server closes its upstream); the call rejects with its
   * reason. Once the stream's id is known it also sends `DELETE /api/streams/<streamId>`.
   */
  signal?: AbortSignal | undefined;
  /** Send `DELETE /api/streams/<streamId>` when aborted (default true; best effort). */
  stopOnAbort?: boolean | undefined;
  /** Reconnection attempts in a row without a new event (default 3). */
  maxRetries?: number | undefined;
  /**
   * Call `chrome.runtime.getPlatformInfo()` every 25 s while streaming so that Chrome does not
   * stop an MV3 service worker. Default: on in an extension's service worker; a number sets the
   * interval in milliseconds.
   */
  keepAlive?: boolean | number | undefined;
  /** Extra request headers (e.g. `X-Request-ID`). */
  headers?: Record<string, string> | undefined;
  /** The fetch function to use (defaults to the global one). */
  fetch?: typeof fetch | undefined;
  /** Called when a connection's response headers arrived (the first and every resumed one). */
  onOpen?: ((info: OpenInfo) => void) | undefined;
  /** Called before waiting `delay` ms to resume a dropped stream. */
  onReconnect?: ((info: ReconnectInfo) => void) | undefined;
}

/**
 * The options of {@link StreamOptions} a resumed stream takes too: how to reach the service, and
 * how to follow the connection.
 */
export type ConnectionOptions = Omit<
  StreamOptions,
  "command" | "text" | "title" | "language" | "instruction" | "background" | "reasoning"
>;

/**
 * The options {@link streamCommand} adds to {@link StreamOptions} that a resumed stream takes too:
 * the callbacks but `onTitle`, and `persist`.
 */
export interface CommandOptions {
  /**
   * Each content event: the piece, and the whole content so far (from before a stop too). A
   * snapshot's content comes as one piece, with `{content, commandId}` as its payload.
   */
  onContent?: ((piece: string, content: string, payload: ContentPayload) => void) | undefined;
  /**
   * Each reasoning event (`reasoning: true`): the piece, and the whole reasoning so far. A
   * snapshot's reasoning comes as one piece, with `{reasoning, commandId}` as its payload.
   */
  onReasoning?: ((piece: string, reasoning: string, payload: ReasoningPayload) => void) | undefined;
  /** The terminal `done` event. */
  onDone?: ((payload: DonePayload, result: StreamResult) => void) | undefined;
  /** An HTTP error, a terminal `event: error`, or a connection that could not be resumed (not an abort). */
  onError?: ((error: AxrisiError) => void) | undefined;
  /** Every raw event, before the other callbacks. */
  onEvent?: ((event: SSEEvent) => void) | undefined;
  /**
   * Keep the running stream in `chrome.storage.session` (its id, last event id, title, content and
   * reasoning so far, `command`, `baseUrl`, `tag`; never the text, the token or the headers) so that
   * {@link resumePending} can take it up after the extension's service worker was stopped; the
   * entry is removed when the call settles. Default: on in an extension's service worker (and for
   * a resumed stream), off elsewhere; `true` wherever `chrome.storage.session` exists.
   */
  persist?: boolean | undefined;
}

/** Options of {@link streamCommand} and {@link StreamProcessor.run}: the stream's and callbacks. */
export interface StreamCommandOptions extends StreamOptions, CommandOptions {
  /** The first event's title (or a snapshot's, after a resume from before it). */
  onTitle?: ((title: string, payload: TitlePayload) => void) | undefined;
  /**
   * Any JSON value kept with the stream's `chrome.storage.session` entry (see `persist`), for the
   * caller to know the stream again in {@link resumePending}: a job id, a tab id.
   */
  tag?: unknown;
}

/**
 * Options of one stream taken up by {@link resumePending}: {@link StreamCommandOptions} without
 * what starts a stream and without `onTitle` (the title came before the stop; it is the pending
 * stream's `title`). `baseUrl` defaults to the stream's; `persist` to on.
 */
export interface ResumeOptions extends ConnectionOptions, CommandOptions {}

/**
 * Options of {@link resumeStream}: how to reach the service and the callbacks, with the id of the
 * stream to read from its start, `onTitle` (the title comes in the snapshot) and `tag` (kept with
 * the stream's entry where `persist` is on).
 */
export interface ResumeStreamOptions extends ResumeOptions {
  /** The stream's id: a {@link StreamEntry}'s `streamId`, or the part of an event id before its last `-`. */
  streamId: string;
  /** The stream's title, from the snapshot. */
  onTitle?: ((title: string, payload: TitlePayload) => void) | undefined;
  /** Any JSON value kept with the stream's `chrome.storage.session` entry (see `persist`). */
  tag?: unknown;
}

/** Options of {@link listStreams}. */
export interface ListOptions {
  /** The service's origin; defaults to the current origin. Required in extension service workers. */
  baseUrl?: string | undefined;
  /** The bearer JWT, or a function that returns it. */
  token: string | (() => string | Promise<string>);
  /** Aborting cancels the request; the call rejects with its reason. */
  signal?: AbortSignal | undefined;
  /** Extra request headers (e.g. `X-Request-ID`). */
  headers?: Record<string, string> | undefined;
  /** The fetch function to use (defaults to the global one). */
  fetch?: typeof fetch | undefined;
}

/** Where a listed stream is: generating, or how it ended. */
export type StreamState = "running" | "done" | "error" | "cancelled";

/** One of the caller's streams, as `GET /api/streams` lists it. */
export interface StreamEntry {
  /** The id to give {@link resumeStream}: the stream's `commandId`, as a string. */
  streamId: string;
  /** The command it runs. */
  command: CommandName;
  /** Its title event's title. */
  title: string;
  state: StreamState | (string & {});
  /** When it started, in milliseconds since the epoch. */
  startedAt: number;
  /** The id of the newest event kept so far. */
  lastEventId: string;
  /** Whether it was started with `background: true`. */
  background: boolean;
  readonly [field: string]: unknown;
}

/**
 * A stream kept in `chrome.storage.session` that has not ended. `title`, `content`, `reasoning`
 * and `commandId` are what had arrived up to `lastEventId`, the id its resume continues from.
 */
export interface PendingStream {
  streamId: string;
  lastEventId: string;
  /** The service's origin it runs on. */
  baseUrl: string;
  /** The command it runs (`"summarize"`, ...). */
  command: CommandName;
  title: string;
  content: string;
  /** `""` unless the stream relays reasoning. */
  reasoning: string;
  commandId: number | null;
  /** The `tag` given to {@link streamCommand}, or `null`. */
  tag: unknown;
  /** When it started (`Date.now()`). */
  startedAt: number;
  /** When its last kept event arrived (`Date.now()`). */
  updatedAt: number;
}

/** A stream {@link resumePending} took up. */
export interface ResumedStream {
  /** What was kept of it. */
  stream: PendingStream;
  /** Settles as {@link streamCommand}'s promise does, with the whole title and content. */
  result: Promise<StreamResult>;
}

/** What {@link resumePending} takes: the same options for every stream, or a function of each. */
export type ResumeChooser =
  | ResumeOptions
  | ((stream: PendingStream) => ResumeOptions | null | undefined | Promise<ResumeOptions | null | undefined>);

/** The result of a stream that ended with `done`. */
export interface StreamResult {
  /** The title event's title. */
  title: string;
  /** Every content event's `content`, joined in order: the model's output. */
  content: string;
  /** Every reasoning event's `reasoning`, joined in order (`""` without `reasoning: true`). */
  reasoning: string;
  /** The terminal event's data. */
  done: DonePayload;
  /** The stream's command id. */
  commandId: number | null;
}

/**
 * The stream as an async iterator of parsed events, across reconnections (each event once), up
 * to and including the terminal one (`done`, or an `event: error`, yielded like any other).
 * Breaking out of the loop cancels the request. Throws an {@link AxrisiError} for an HTTP error
 * answer and for a stream that could not be resumed; on abort, the signal's reason.
 */
export declare function streamEvents(options: StreamOptions): AsyncGenerator<SSEEvent, void, undefined>;

/**
 * Run one command and stream its answer through callbacks; resolves with the whole result, or
 * rejects with an {@link AxrisiError} (its `partial` holds what had arrived) or, when aborted,
 * with the signal's reason.
 */
export declare function streamCommand(options: StreamCommandOptions): Promise<StreamResult>;

/**
 * The caller's streams that can still be read (`GET /api/streams`): running, or ended within the
 * service's resume TTL, newest first, at most 50. Rejects with an {@link AxrisiError} for an HTTP
 * error answer (`unavailable` with `retryAfter` when the service cannot tell), for no answer
 * (`network_error`) or an answer that is not the list (`bad_response`); on abort, the signal's
 * reason.
 */
export declare function listStreams(options: ListOptions): Promise<StreamEntry[]>;

/**
 * Read one of the caller's streams from its start with `?catchup=snapshot`: what the service kept
 * comes as one snapshot (its title to `onTitle`, its reasoning and content to `onReasoning` and
 * `onContent` as one piece each), then the rest live; the callbacks see the whole answer once.
 * Settles as {@link streamCommand} does. Aborting stops the stream on the service unless
 * `stopOnAbort: false`.
 */
export declare function resumeStream(options: ResumeStreamOptions): Promise<StreamResult>;

/**
 * Every stream kept in `chrome.storage.session` that has not ended, oldest first (those running
 * in this context included); `[]` without `chrome.storage.session`.
 */
export declare function pendingStreams(): Promise<PendingStream[]>;

/**
 * Take up every kept stream that has not ended and is not running in this context (call it when
 * an extension's service worker starts): each goes on from its last kept event, every event
 * once, with the options given (or returned for it; `null` forgets it). Each entry is removed
 * when its resume settles. The `result` promises never count as unhandled rejections.
 */
export declare function resumePending(options: ResumeChooser): Promise<ResumedStream[]>;

/** Options of {@link StreamProcessor}. */
export interface StreamProcessorOptions {
  /** Receives the whole text so far and the chunk just added. */
  onUpdate?: ((text: string, chunk: string) => void) | undefined;
}

/** A text buffer fed by a stream, with `processChunk` and `cleanup`. */
export declare class StreamProcessor {
  constructor(options?: StreamProcessorOptions);
  /** The text received so far. */
  buffer: string;
  onUpdate: ((text: string, chunk: string) => void) | undefined;
  /** Append a chunk of content and call `onUpdate` with the whole text. */
  processChunk(content: string): void;
  /** Stream a command into this processor (a run still going is cleaned up first). */
  run(options: StreamCommandOptions): Promise<StreamResult>;
  /** Abort the running stream, if any (the server then closes its upstream). */
  cleanup(): void;
}

/** Whether an event ends the stream: an `event: error`, or data with `done: true`. */
export declare function isTerminal(event: SSEEvent): boolean;

/** The stream id of an event id: the part before its last `-`, or `""` when it has none. */
export declare function streamOf(eventId: string): string;

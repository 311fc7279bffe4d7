// Axrisi Stream browser client: one ES module, no imports, no build step.
//
// Works in a page, a dedicated Worker and an MV3 extension service worker: it uses only `fetch`,
// `ReadableStream` readers, `TextDecoder`, `AbortController` and timers (no DOM, no `window`, no
// `EventSource`, which can neither POST nor send an `Authorization` header).
//
//   import { streamCommand } from "/static/axrisi-client.js";
//   const result = await streamCommand({
//     baseUrl: "https://axrisi.example", token, command: "summarize", text, title,
//     onTitle: (title) => { ... }, onContent: (piece, content) => { ... },
//   });
//
// The wire format is the service's contract (shared/API.md): `POST /api/run` answers a stream of
// Server-Sent Events, each `id: <streamId>-<n>` and one `data:` line of JSON: a title event, content
// events (after `reasoning` events, when the request asked for a reasoning model's thinking), then
// exactly one terminal event (`{"done": true}` or `event: error`). A connection that drops before
// the terminal event is resumed with `GET /api/streams/<streamId>` and `Last-Event-ID`; there
// `streamCommand` asks for `?catchup=snapshot`, so that what was missed comes as one event
// (`{"snapshot": {"title", "content", "reasoning"}}`) rather than one event per piece.
//
// `listStreams` lists the caller's running and recent streams (`GET /api/streams`), and
// `resumeStream` reopens one of them, from the start, as one snapshot and then live:
//
//   const [newest] = await listStreams({ baseUrl, token });
//   await resumeStream({ baseUrl, token, streamId: newest.streamId, onContent, onReasoning });
//
// In an MV3 extension, Chrome may stop the service worker mid-stream (and its fetch with it). There
// `streamCommand` keeps each running stream's id, last event id and what arrived so far in
// `chrome.storage.session`, and `resumePending` takes up every stream that has not ended when the
// worker starts again:
//
//   resumePending((stream) => ({ token, onContent: (piece, content) => { ... } }));

/** The reconnection delay when the server sent no `retry:` field, in milliseconds. */
export const DEFAULT_RETRY_MS = 1000;
/** The longest wait between two reconnection attempts, in milliseconds. */
export const MAX_RETRY_DELAY_MS = 30000;
/** How often `keepAlive` calls `chrome.runtime.getPlatformInfo()`, in milliseconds. */
export const KEEPALIVE_INTERVAL_MS = 25000;
/** The prefix of the `chrome.storage.session` keys of running streams (`persist`). */
export const STREAM_KEY_PREFIX = "axrisi-stream:";

const LF = 10;
const CR = 13;

/**
 * An incremental parser for the `text/event-stream` format that follows the HTML standard's
 * "event stream interpretation" rules exactly:
 *
 * - lines end in CRLF, LF or CR; a CR that ends one chunk and an LF that starts the next are one
 *   line end (not two: the bug of eventsource-parser #17);
 * - a line starting with `:` is a comment; `field: value` loses one leading space of its value;
 *   a line without a colon is a field with an empty value;
 * - `event` sets the type, `data` lines are joined with `\n`, `id` sets the event id buffer unless
 *   its value contains U+0000 NULL, `retry` sets the reconnection time when it is ASCII digits
 *   only, other fields are ignored;
 * - a blank line ends a block: {@link SSEParser#lastEventId} takes the id buffer's value (also for
 *   a block without data, as the standard's dispatch does), and the event is dispatched unless its
 *   data is empty; the id persists across events and connections until an `id:` changes it;
 * - at the end of the stream an unterminated last line and a block never ended by a blank line
 *   are discarded, its `id:` included: the id a client reconnects with comes from ended blocks
 *   only (web-platform-tests `eventsource/format-data-before-final-empty-line`).
 *
 * `feed` takes text. Decode bytes with one `TextDecoder("utf-8")` in stream mode per connection
 * (which also drops a leading byte-order mark, as the standard wants), or use {@link feedBytes},
 * which does exactly that.
 *
 * @example
 * const parser = new SSEParser();
 * for (const event of parser.feed("id: 1\ndata: hello\n\n")) console.log(event.data);
 */
export class SSEParser {
  /**
   * @param {{onRetry?: (ms: number) => void, onComment?: (text: string) => void}} [hooks]
   *   `onRetry` is called with each valid `retry:` value; `onComment` with each comment's text
   *   (after the colon), e.g. the service's `: ping` heartbeats.
   */
  constructor(hooks = {}) {
    /** The last valid `retry:` value in milliseconds, or `null` when none arrived. @type {number|null} */
    this.retry = null;
    this._hooks = hooks;
    this._buffer = "";
    this._skipLF = false;
    this._data = "";
    this._type = "";
    /** The standard's "last event ID buffer": `id:` fields of the block being read. */
    this._id = "";
    /** The standard's "last event ID string". */
    this._lastEventId = "";
    /** @type {TextDecoder|null} */
    this._decoder = null;
  }

  /**
   * The last event id: the id buffer as of the last blank line (the standard's "last event ID
   * string"), the value to send as `Last-Event-ID` when reconnecting. It persists across events
   * and across {@link end}; an `id:` in a block that never got its blank line does not count.
   * Setting it (before feeding a new connection, say) sets both it and the id buffer.
   * @type {string}
   */
  get lastEventId() {
    return this._lastEventId;
  }

  set lastEventId(value) {
    this._lastEventId = String(value);
    this._id = this._lastEventId;
  }

  /**
   * Feed the next piece of decoded text; returns the events it completed, in order.
   * @param {string} text
   * @returns {SSEEvent[]}
   */
  feed(text) {
    /** @type {SSEEvent[]} */
    const events = [];
    if (!text) return events;
    if (this._skipLF) {
      this._skipLF = false;
      if (text.charCodeAt(0) === LF) text = text.slice(1);
    }
    const buffer = this._buffer + text;
    let start = 0;
    // Characters before the old buffer's end were already scanned and held no line end.
    let i = this._buffer.length;
    const n = buffer.length;
    for (; i < n; i++) {
      const c = buffer.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      this._line(buffer.slice(start, i), events);
      if (c === CR) {
        if (i + 1 < n) {
          if (buffer.charCodeAt(i + 1) === LF) i++;
        } else {
          this._skipLF = true; // The LF of a CRLF may open the next chunk.
        }
      }
      start = i + 1;
    }
    this._buffer = buffer.slice(start);
    return events;
  }

  /**
   * Feed raw bytes, decoded as UTF-8 in stream mode (a multi-byte character split across two
   * chunks comes out whole). Pass `null` (or call {@link end}) at the end of the stream.
   * @param {Uint8Array|null} bytes
   * @returns {SSEEvent[]}
   */
  feedBytes(bytes) {
    if (!this._decoder) this._decoder = new TextDecoder("utf-8");
    if (bytes === null) return this.end();
    return this.feed(this._decoder.decode(bytes, { stream: true }));
  }

  /**
   * The end of the stream: flushes the decoder of {@link feedBytes}, then discards what never
   * ended, as the standard says ("any pending data must be discarded"): a last line without a
   * line end (whatever its field, `retry:` included) and an event never terminated by a blank
   * line, with its `id:` (the id buffer goes back to {@link lastEventId}). Returns the events
   * completed on the way: always none by those rules, kept for symmetry with `feed`. The parser
   * can then be reused for a new connection, keeping `lastEventId` and `retry`.
   * @returns {SSEEvent[]}
   */
  end() {
    /** @type {SSEEvent[]} */
    const events = [];
    if (this._decoder) {
      const rest = this._decoder.decode();
      if (rest) events.push(...this.feed(rest));
      this._decoder = null;
    }
    // "Once the end of the file is reached, any pending data must be discarded."
    this._buffer = "";
    this._skipLF = false;
    this._data = "";
    this._type = "";
    this._id = this._lastEventId;
    return events;
  }

  /**
   * @param {string} line
   * @param {SSEEvent[]} events
   */
  _line(line, events) {
    if (line === "") {
      this._dispatch(events);
      return;
    }
    if (line.charCodeAt(0) === 58 /* : */) {
      if (this._hooks.onComment) this._hooks.onComment(line.slice(1));
      return;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32 /* space */) value = value.slice(1);
    }
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data += value + "\n";
        break;
      case "id":
        if (value.indexOf("\u0000") === -1) this._id = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) {
          this.retry = parseInt(value, 10);
          if (this._hooks.onRetry) this._hooks.onRetry(this.retry);
        }
        break;
      default:
        break; // Other fields are ignored.
    }
  }

  /** @param {SSEEvent[]} events */
  _dispatch(events) {
    // The standard's dispatch sets the last event ID string first, even for a block with no data.
    this._lastEventId = this._id;
    if (this._data === "") {
      this._type = "";
      return;
    }
    let data = this._data;
    if (data.charCodeAt(data.length - 1) === LF) data = data.slice(0, -1);
    events.push({ id: this._lastEventId, event: this._type || "message", data });
    this._data = "";
    this._type = "";
  }
}

/**
 * One parsed Server-Sent Event.
 * @typedef {object} SSEEvent
 * @property {string} id     The last event id when it was dispatched (`"<streamId>-<n>"` here).
 * @property {string} event  The event type: `"message"` unless an `event:` field named another.
 * @property {string} data   The data lines joined with `\n` (compact JSON in this service).
 */

/**
 * An error of the Axrisi API, whichever way it came: an HTTP error answer (`status` is its status,
 * `code` and `error` come from the contract's JSON body `{"error", "code"}`, `retryAfter` from
 * the `Retry-After` header), a terminal `event: error` in the stream (`status` is 200 and
 * `commandId` names the stream), or a failure of the connection (`code` `"network_error"`).
 */
export class AxrisiError extends Error {
  /**
   * @param {{status?: number, code: string, error: string, retryAfter?: number|null,
   *   commandId?: number|null, requestId?: string|null}} details
   */
  constructor({ status = 0, code, error, retryAfter = null, commandId = null, requestId = null }) {
    super(error);
    this.name = "AxrisiError";
    /** The HTTP status; 200 for an error event in a stream, 0 without an answer. */
    this.status = status;
    /** The contract's machine-readable code, e.g. `"unauthorized"`, `"upstream_error"`. */
    this.code = code;
    /** The sentence a person can act on. */
    this.error = error;
    /** Seconds to wait before trying again (`Retry-After`), or `null`. */
    this.retryAfter = retryAfter;
    /** The stream's `commandId` for an error that ended a stream, else `null`. */
    this.commandId = commandId;
    /** The response's `X-Request-ID`, to quote in a bug report, when the header was readable. */
    this.requestId = requestId;
    /**
     * What had arrived before the error; set by streamCommand.
     * @type {{title: string, content: string, reasoning: string, commandId: number|null}|null}
     */
    this.partial = null;
  }
}

/**
 * Options of {@link streamEvents} and {@link streamCommand}.
 * @typedef {object} StreamOptions
 * @property {string} [baseUrl]  The service's origin, e.g. `"https://axrisi.example"`; defaults to
 *   the current origin (pages and same-origin workers). Required in extension service workers.
 * @property {string|(() => string|Promise<string>)} token  The bearer JWT, or a function that
 *   returns it (asked again before each reconnection, so a refreshed token is used).
 * @property {string} command  A name from `GET /api/commands`: `summarize`, `explain`, ...
 * @property {string} text  The text to work on.
 * @property {string} [title]  The source's title.
 * @property {string} [language]  The target language (`translate`).
 * @property {string} [instruction]  The instruction (`custom`).
 * @property {boolean} [background]  `true`: the service generates the answer to its end whether
 *   or not anyone reads it (for `AXRISI_BACKGROUND_MAX_SECONDS` at most); it can be found later
 *   with {@link listStreams} and read with {@link resumeStream}. Sent only when `true`.
 * @property {boolean} [reasoning]  `true`: relay a reasoning model's thinking as `reasoning`
 *   events (`onReasoning`); the content stays exactly the answer. Sent only when `true`.
 * @property {boolean} [snapshot]  Resume with `?catchup=snapshot`: the events missed while
 *   disconnected come as one event `{"snapshot": {"title"?, "content", "reasoning"?},
 *   "commandId"}` carrying the id of the last event it covers. Default: on for
 *   {@link streamCommand}, {@link resumeStream} and {@link resumePending}, which apply it; off for
 *   {@link streamEvents}, whose consumer sees the raw events.
 * @property {AbortSignal} [signal]  Aborting stops reading and cancels the request, so the
 *   server closes its upstream; the promise then rejects with the signal's reason. Once the
 *   stream's id is known, aborting also sends `DELETE /api/streams/<streamId>` (see
 *   `stopOnAbort`), which stops it on the server even while resume grace keeps it running.
 * @property {boolean} [stopOnAbort=true]  Send that `DELETE` when aborted (best effort: its
 *   outcome is not awaited, and a failure is ignored).
 * @property {number} [maxRetries=3]  Reconnection attempts in a row without a new event.
 * @property {boolean|number} [keepAlive]  In an MV3 service worker, call
 *   `chrome.runtime.getPlatformInfo()` every 25 s while streaming so that Chrome does not stop the
 *   worker (it does after 30 s without extension API calls). Default: on in an extension's
 *   service worker, off elsewhere; `true` forces it wherever `chrome.runtime` exists; a number
 *   sets the interval in milliseconds.
 * @property {Record<string, string>} [headers]  Extra request headers (e.g. `X-Request-ID`).
 * @property {typeof fetch} [fetch]  The fetch function to use (defaults to the global one).
 * @property {(info: {status: number, resumed: boolean, requestId: string|null}) => void} [onOpen]
 *   Called when a connection's response headers arrived (the first and every resumed one).
 * @property {(info: {attempt: number, delay: number, lastEventId: string, cause: unknown}) => void}
 *   [onReconnect]  Called before waiting `delay` ms to resume a dropped stream.
 */

/**
 * The stream as an async iterator of parsed events `{id, event, data}`, across reconnections:
 * a connection that drops before the terminal event is resumed (`GET /api/streams/<streamId>`
 * with `Last-Event-ID`) after the server's `retry:` delay (default 1 s, doubling on each failed
 * attempt, capped at 30 s), at most `maxRetries` times in a row; events already yielded are
 * skipped, so every event comes exactly once. The iterator ends after the terminal event (a
 * `done` event, or an `event: error`, which is yielded like any other). Breaking out of the loop
 * cancels the request.
 *
 * Throws an {@link AxrisiError} for an HTTP error answer (with `status`, `code`, `error`,
 * `retryAfter`), for a 404 on resume (`code` `"not_found"`), and for a connection that could not
 * be resumed (`"network_error"`); on abort it throws the signal's reason (an `AbortError`).
 *
 * @param {StreamOptions} options
 * @returns {AsyncGenerator<SSEEvent, void, undefined>}
 * @example
 * for await (const event of streamEvents({ token, command: "summarize", text })) {
 *   console.log(event.id, event.event, JSON.parse(event.data));
 * }
 */
export function streamEvents(options) {
  return events(options, null, false);
}

/**
 * {@link streamEvents}, or with `from` the rest of a known stream: the first request is then a
 * resume after `from.lastEventId` (from its start when that is `""`; `command`, `text` are not
 * needed).
 * @param {StreamOptions|ResumeOptions} options
 * @param {PendingStream|null} from
 * @param {boolean} snapshot  Resume with `?catchup=snapshot` unless `options.snapshot` says.
 * @returns {AsyncGenerator<SSEEvent, void, undefined>}
 */
async function* events(options, from, snapshot) {
  const opts = normalize(options, from);
  const catchup = typeof opts.snapshot === "boolean" ? opts.snapshot : snapshot;
  const controller = new AbortController();
  const userSignal = opts.signal;
  let lastId = from ? from.lastEventId : "";
  /** The stream's id: known from the start for a resume, else from the first event's id. */
  const streamIdNow = () => streamOf(lastId) || (from ? from.streamId : "");
  let ended = false;
  const onUserAbort = () => {
    controller.abort(userSignal?.reason);
    if (!ended && opts.stopOnAbort !== false) stopStream(opts, streamIdNow());
  };
  if (userSignal) {
    if (userSignal.aborted) throw abortReason(userSignal);
    userSignal.addEventListener("abort", onUserAbort, { once: true });
  }
  const stopKeepAlive = startKeepAlive(opts.keepAlive);
  let lastSeq = sequenceOf(lastId) ?? -1;
  let retryMs = DEFAULT_RETRY_MS;
  let failures = 0;
  let resumed = Boolean(from);
  try {
    for (;;) {
      let progressed = false;
      let cause = null;
      try {
        const response = resumed
          ? await resume(opts, streamIdNow(), lastId, catchup, controller.signal)
          : await start(opts, controller.signal);
        opts.onOpen?.({ status: response.status, resumed, requestId: requestIdOf(response) });
        const parser = new SSEParser({ onRetry: (ms) => { retryMs = ms; } });
        // request() answers only responses that have a body.
        const reader = /** @type {ReadableStream<Uint8Array>} */ (response.body).getReader();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            const events = done ? parser.feedBytes(null) : parser.feedBytes(value);
            for (const event of events) {
              const seq = sequenceOf(event.id);
              if (seq !== null && lastId && streamOf(event.id) === streamOf(lastId) && seq <= lastSeq) {
                continue; // Already yielded before a reconnection.
              }
              if (event.id) {
                lastId = event.id;
                if (seq !== null) lastSeq = seq;
              }
              progressed = true;
              failures = 0;
              yield event;
              if (isTerminal(event)) {
                ended = true;
                return;
              }
            }
            if (done) break;
          }
        } finally {
          // Stop reading: after the terminal event, on a drop, on abort, or when the consumer
          // left the loop. Cancelling the reader of an aborted fetch is a harmless no-op.
          reader.cancel().catch(() => {});
        }
        cause = new Error("The connection ended before the stream's last event.");
      } catch (error) {
        if (controller.signal.aborted) throw abortReason(userSignal) ?? error;
        if (error instanceof AxrisiError && !isRetryableStatus(error)) throw error;
        cause = error;
      }
      // The connection dropped (or a resume answered 5xx) before the terminal event.
      if (controller.signal.aborted) throw abortReason(userSignal);
      if (!progressed) failures++;
      else failures = 1;
      const streamId = streamIdNow();
      if (!streamId || failures > opts.maxRetries) {
        if (cause instanceof AxrisiError) throw cause;
        throw new AxrisiError({
          code: "network_error",
          error: streamId
            ? "The connection to the server was lost and could not be resumed."
            : "The connection to the server was lost before the stream started.",
        });
      }
      let delay = Math.min(MAX_RETRY_DELAY_MS, retryMs * 2 ** (failures - 1));
      if (cause instanceof AxrisiError && cause.retryAfter != null) {
        delay = Math.max(delay, Math.min(MAX_RETRY_DELAY_MS, cause.retryAfter * 1000));
      }
      opts.onReconnect?.({ attempt: failures, delay, lastEventId: lastId, cause });
      await sleep(delay, controller.signal);
      if (controller.signal.aborted) throw abortReason(userSignal);
      resumed = true;
    }
  } finally {
    stopKeepAlive();
    if (userSignal) userSignal.removeEventListener("abort", onUserAbort);
    controller.abort(); // Closes any connection still open (a consumer that broke out early).
  }
}

/**
 * The result of a stream that ended with `done`.
 * @typedef {object} StreamResult
 * @property {string} title  The title event's title.
 * @property {string} content  Every content event's `content`, joined in order: the model's output.
 * @property {string} reasoning  Every reasoning event's `reasoning`, joined in order: the model's
 *   thinking (`""` unless the stream was started with `reasoning: true` by a reasoning model).
 * @property {Record<string, unknown>|null} done  The terminal event's payload (`{done: true,
 *   finishReason, usage, ...}`); `null` only while the stream runs.
 * @property {number|null} commandId  The stream's command id.
 */

/**
 * Options of {@link streamCommand}: {@link StreamOptions}, callbacks, and persistence.
 *
 * `persist`: keep the running stream in `chrome.storage.session` (its id, last event id, title,
 * content and reasoning so far, `command`, `baseUrl` and `tag`; never the text, the token or the
 * headers), so that {@link resumePending} can take it up after the extension's service worker
 * was stopped.
 * The entry is removed when the call settles (done, error, abort). Default: on in an extension's
 * service worker where `chrome.storage.session` exists, off elsewhere; `true` turns it on wherever
 * `chrome.storage.session` exists (an extension page, say). `tag` is any JSON value kept with
 * the entry, for the caller to know the stream again (a job id, a tab id).
 * @typedef {StreamOptions & {
 *   onTitle?: (title: string, payload: Record<string, unknown>) => void,
 *   onContent?: (piece: string, content: string, payload: Record<string, unknown>) => void,
 *   onReasoning?: (piece: string, reasoning: string, payload: Record<string, unknown>) => void,
 *   onDone?: (payload: Record<string, unknown>, result: StreamResult) => void,
 *   onError?: (error: AxrisiError) => void,
 *   onEvent?: (event: SSEEvent) => void,
 *   persist?: boolean,
 *   tag?: unknown,
 * }} StreamCommandOptions
 */

/**
 * Options of {@link resumePending} for one stream: those of {@link streamCommand} without what
 * starts a stream, and without `onTitle` (the title came before the stop: it is the pending
 * stream's `title`). `baseUrl` defaults to the stream's. `persist` defaults to on, so that a stream
 * survives a second stop too.
 * @typedef {Omit<StreamCommandOptions, "command"|"text"|"title"|"language"|"instruction"
 *   |"background"|"reasoning"|"tag"|"onTitle">} ResumeOptions
 */

/**
 * Options of {@link resumeStream}: those of {@link resumePending} for one stream, with `onTitle`
 * (the title comes in the snapshot), `tag` (kept with the stream, see `persist`) and the id of
 * the stream to read.
 * @typedef {ResumeOptions & {
 *   streamId: string,
 *   onTitle?: (title: string, payload: Record<string, unknown>) => void,
 *   tag?: unknown,
 * }} ResumeStreamOptions
 */

/**
 * Options of {@link listStreams}.
 * @typedef {object} ListOptions
 * @property {string} [baseUrl]  The service's origin; defaults to the current origin.
 * @property {string|(() => string|Promise<string>)} token  The bearer JWT, or a function that
 *   returns it.
 * @property {AbortSignal} [signal]  Aborting cancels the request; the call rejects with its reason.
 * @property {Record<string, string>} [headers]  Extra request headers.
 * @property {typeof fetch} [fetch]  The fetch function to use (defaults to the global one).
 */

/**
 * One of the caller's streams, as `GET /api/streams` lists it.
 * @typedef {object} StreamEntry
 * @property {string} streamId  The id to give {@link resumeStream} (the `commandId`, as a string).
 * @property {string} command  The command it runs.
 * @property {string} title  Its title event's title.
 * @property {string} state  `"running"`, `"done"`, `"error"` or `"cancelled"`.
 * @property {number} startedAt  When it started, in milliseconds since the epoch.
 * @property {string} lastEventId  The id of the newest event kept so far.
 * @property {boolean} background  Whether it was started with `background: true`.
 */

/**
 * A stream kept in `chrome.storage.session` that has not ended, as {@link pendingStreams} lists it.
 * `title`, `content`, `reasoning` and `commandId` are what had arrived up to `lastEventId`, the id
 * a resume continues from.
 * @typedef {object} PendingStream
 * @property {string} streamId
 * @property {string} lastEventId
 * @property {string} baseUrl
 * @property {string} command
 * @property {string} title
 * @property {string} content
 * @property {string} reasoning
 * @property {number|null} commandId
 * @property {unknown} tag  The `tag` given to {@link streamCommand}, or `null`.
 * @property {number} startedAt  When the stream started (`Date.now()`).
 * @property {number} updatedAt  When its last kept event arrived.
 */

/**
 * A stream {@link resumePending} took up.
 * @typedef {object} ResumedStream
 * @property {PendingStream} stream  What was kept of it.
 * @property {Promise<StreamResult>} result  Settles as {@link streamCommand}'s promise does, with
 *   the whole title and content (from before the stop too).
 */

/**
 * Run one command and stream its answer through callbacks; resolves with the whole result.
 *
 * Callbacks: `onTitle(title, payload)` for the first event; `onContent(piece, content, payload)`
 * for each content event with the text so far; `onReasoning(piece, reasoning, payload)` likewise
 * for each reasoning event (with `reasoning: true`); `onDone(payload, result)` at the end; and
 * `onError(error)` with an {@link AxrisiError} (`{code, error, commandId, status, retryAfter}`)
 * for an HTTP error, a terminal `event: error` or a connection that could not be resumed. The
 * promise rejects with the same error (its `partial` holds what had arrived), or with the
 * signal's reason when aborted (then `onError` is not called: the caller stopped it).
 *
 * A dropped connection is resumed with `?catchup=snapshot` (unless `snapshot: false`): what was
 * missed arrives as one snapshot event, which goes to the same callbacks as the events it folds
 * (`onTitle` with its title, `onReasoning` and `onContent` with its reasoning and content as one
 * piece each), so the callbacks see every piece of text once, in order.
 *
 * @param {StreamCommandOptions} options  See {@link StreamOptions}; `onEvent` sees every raw
 *   event first.
 * @returns {Promise<StreamResult>}
 * @example
 * const controller = new AbortController();
 * const { content } = await streamCommand({
 *   baseUrl, token, command: "translate", language: "French", text, signal: controller.signal,
 *   onContent: (piece, soFar) => render(soFar),
 *   onError: (e) => show(e.code, e.error),
 * });
 */
export function streamCommand(options) {
  return runCommand(options, null, false);
}

/**
 * The caller's streams that can still be read (`GET /api/streams`): running, or ended within the
 * service's resume TTL, newest first, at most 50. Read one with {@link resumeStream}.
 *
 * Rejects with an {@link AxrisiError} for an HTTP error answer (`unauthorized`; `unavailable`,
 * with `retryAfter`, when the service's shared store cannot tell), for no answer
 * (`network_error`) and for an answer that is not the list (`bad_response`); on abort, with the
 * signal's reason.
 * @param {ListOptions} options
 * @returns {Promise<StreamEntry[]>}
 * @example
 * const running = (await listStreams({ baseUrl, token })).filter((s) => s.state === "running");
 */
export async function listStreams(options) {
  if (!options || typeof options !== "object") throw new TypeError("listStreams needs an options object.");
  const baseUrl = baseUrlOf(options, null);
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const response = await send({ ...options, fetch: fetchImpl }, `${baseUrl}/api/streams`,
    { method: "GET", headers: {} }, options.signal, "application/json");
  /** @type {unknown} */
  let body = null;
  try {
    body = await response.json();
  } catch {
    if (options.signal?.aborted) throw abortReason(options.signal);
    body = null;
  }
  const streams = body !== null && typeof body === "object"
    ? /** @type {{streams?: unknown}} */ (body).streams
    : undefined;
  if (!Array.isArray(streams)) {
    throw new AxrisiError({
      status: response.status,
      code: "bad_response",
      error: `The server answered ${response.status} without a list of streams.`,
      requestId: requestIdOf(response),
    });
  }
  return /** @type {StreamEntry[]} */ (streams);
}

/**
 * Read one of the caller's streams from its start (a stream from {@link listStreams}, or one
 * started elsewhere with `background: true`): `GET /api/streams/<streamId>?catchup=snapshot`.
 * What the service kept arrives as one snapshot event (the title to `onTitle`, the reasoning and
 * the content so far to `onReasoning` and `onContent` as one piece each), then the rest live, to
 * its terminal event; the callbacks see the whole answer once, and the promise settles as
 * {@link streamCommand}'s does. A stream that had ended gives its whole answer and its end at
 * once; one the service no longer keeps rejects with `not_found`.
 *
 * Aborting sends `DELETE /api/streams/<streamId>` unless `stopOnAbort: false`: pass that to stop
 * reading a background stream without stopping it.
 * @param {ResumeStreamOptions} options
 * @returns {Promise<StreamResult>}
 * @example
 * const [newest] = await listStreams({ baseUrl, token });
 * if (newest) await resumeStream({ baseUrl, token, streamId: newest.streamId,
 *   onTitle: showTitle, onContent: (piece, soFar) => render(soFar) });
 */
export async function resumeStream(options) {
  if (!options || typeof options !== "object") throw new TypeError("resumeStream needs an options object.");
  const streamId = String(options.streamId ?? "");
  if (!/^[0-9]+$/.test(streamId)) {
    throw new TypeError("resumeStream needs the streamId of a stream (digits, from listStreams).");
  }
  const now = Date.now();
  /** @type {PendingStream} */
  const from = {
    streamId, lastEventId: "", baseUrl: baseUrlOf(options, null), command: "", title: "",
    content: "", reasoning: "", commandId: null, tag: options.tag ?? null, startedAt: now,
    updatedAt: now,
  };
  return runCommand(options, from, false);
}

/**
 * Every stream kept in `chrome.storage.session` that has not ended (see `persist`), oldest
 * first, those running in this context included; `[]` where there is no `chrome.storage.session`.
 * @returns {Promise<PendingStream[]>}
 */
export async function pendingStreams() {
  const area = sessionArea();
  if (!area) return [];
  const items = await area.get(null);
  /** @type {PendingStream[]} */
  const streams = [];
  for (const [key, value] of Object.entries(items || {})) {
    if (key.startsWith(STREAM_KEY_PREFIX) && isPendingStream(value)
        && key === STREAM_KEY_PREFIX + value.streamId) {
      // An entry kept by a client from before reasoning events has none.
      streams.push({ ...value, reasoning: typeof value.reasoning === "string" ? value.reasoning : "" });
    }
  }
  return streams.sort((a, b) => a.startedAt - b.startedAt);
}

/**
 * Take up every kept stream that has not ended and is not running in this context: call this
 * when an extension's service worker starts (at its top level), and the streams that were
 * running when Chrome stopped it go on from their last kept event, each event once.
 *
 * `options` are the callbacks and connection options for each stream, or a function of the
 * {@link PendingStream} that returns them (it may be async): there the caller shows what had
 * arrived (`stream.title`, `stream.content`) and routes the rest by `stream.tag`. Returning `null`
 * forgets that stream (its entry is removed; with no reader the service ends it after its resume
 * grace). `onContent`'s second argument and the result's `content` (and `onReasoning`'s and the
 * result's `reasoning`) include what came before the stop; each stream goes on with
 * `?catchup=snapshot` (see {@link streamCommand}). Each stream's entry is removed when its resume
 * settles, so none is taken up twice; a stream whose events the service no longer keeps ends
 * with `onError` (`not_found`).
 *
 * The service must keep a stream going while no client reads it for as long as the worker is
 * down: `AXRISI_RESUME_GRACE_SECONDS` above 0 (else the stream ends `cancelled` at the stop).
 *
 * @param {ResumeOptions|((stream: PendingStream) =>
 *   ResumeOptions|null|undefined|Promise<ResumeOptions|null|undefined>)} options
 * @returns {Promise<ResumedStream[]>}  The streams taken up; their `result` promises never count
 *   as unhandled rejections (errors also go to `onError`).
 * @example
 * // service-worker.js, at the top level:
 * resumePending((stream) => ({
 *   token: getToken, signal: controller.signal,
 *   onContent: (piece, content) => show(stream.tag, content),
 *   onDone: () => finished(stream.tag),
 * }));
 */
export async function resumePending(options) {
  const claimed = (await pendingStreams()).filter((stream) => !running.has(stream.streamId));
  for (const stream of claimed) running.add(stream.streamId); // Before any await: no race.
  /** @type {ResumedStream[]} */
  const resumed = [];
  let next = 0;
  try {
    for (; next < claimed.length; next++) {
      const stream = claimed[next];
      const chosen = typeof options === "function" ? await options(stream) : options;
      if (!chosen) {
        // Removed before the claim goes, so that no other call takes it meanwhile.
        await sessionArea()?.remove(STREAM_KEY_PREFIX + stream.streamId).catch(() => {});
        running.delete(stream.streamId);
        continue;
      }
      const result = runCommand(chosen, stream, true);
      result.catch(() => {}); // Handled by the caller, or through onError.
      resumed.push({ stream, result });
    }
  } finally {
    // A function that threw leaves the streams it did not take up for a later call.
    for (const stream of claimed.slice(next)) running.delete(stream.streamId);
  }
  return resumed;
}

/**
 * {@link streamCommand}, or with `from` the rest of a known stream.
 * @param {StreamCommandOptions|ResumeOptions|ResumeStreamOptions} options
 * @param {PendingStream|null} from  Where to go on from: a kept entry ({@link resumePending}),
 *   or the start of a stream ({@link resumeStream}, `lastEventId` `""`).
 * @param {boolean} kept  `from` is an entry of `chrome.storage.session`, claimed in `running`.
 * @returns {Promise<StreamResult>}
 */
async function runCommand(options, from, kept) {
  const fresh = from ? null : /** @type {StreamCommandOptions} */ (options);
  const onTitle = kept ? undefined : /** @type {StreamCommandOptions} */ (options).onTitle;
  /** @type {StreamResult} */
  const result = from
    ? { title: from.title, content: from.content, reasoning: from.reasoning, done: null,
      commandId: from.commandId }
    : { title: "", content: "", reasoning: "", done: null, commandId: null };
  let streamId = from ? from.streamId : "";
  // A stream read from its start is claimed here, unless it already runs in this context (then
  // that call owns the claim).
  const claimed = Boolean(from && !kept && !running.has(streamId));
  if (claimed) running.add(streamId);
  const area = kept || persistWanted(options.persist) ? sessionArea() : null;
  const record = area && new StreamRecord(area, options.persist !== false, from ?? {
    baseUrl: baseUrlOf(options, null),
    command: String(fresh?.command ?? ""),
    tag: fresh?.tag ?? null,
    startedAt: Date.now(),
  }, kept && from ? from.streamId : "");
  /**
   * @param {unknown} error
   * @returns {never}
   */
  const fail = (error) => {
    if (error instanceof AxrisiError) {
      error.partial = { title: result.title, content: result.content, reasoning: result.reasoning,
        commandId: result.commandId };
      if (typeof options.onError === "function") options.onError(error);
    }
    throw error;
  };
  /**
   * @param {string} title
   * @param {Record<string, unknown>} payload
   */
  const gotTitle = (title, payload) => {
    result.title = title;
    if (typeof onTitle === "function") onTitle(title, payload);
  };
  /**
   * @param {string} piece
   * @param {Record<string, unknown>} payload
   */
  const gotReasoning = (piece, payload) => {
    result.reasoning += piece;
    if (typeof options.onReasoning === "function") options.onReasoning(piece, result.reasoning, payload);
  };
  /**
   * @param {string} piece
   * @param {Record<string, unknown>} payload
   */
  const gotContent = (piece, payload) => {
    result.content += piece;
    if (typeof options.onContent === "function") options.onContent(piece, result.content, payload);
  };
  try {
    for await (const event of events(options, from, true)) {
      if (typeof options.onEvent === "function") options.onEvent(event);
      const payload = parseData(event);
      if (payload && typeof payload.commandId === "number") result.commandId = payload.commandId;
      if (event.event === "error") {
        fail(new AxrisiError({
          status: 200,
          code: String(payload?.code ?? "internal"),
          error: String(payload?.error ?? "The stream ended with an error."),
          commandId: result.commandId, // Taken from this payload above when it has one.
        }));
      }
      if (event.event === "message" && payload) {
        if (typeof payload.title === "string") gotTitle(payload.title, payload);
        if (typeof payload.reasoning === "string") gotReasoning(payload.reasoning, payload);
        if (typeof payload.content === "string") gotContent(payload.content, payload);
        const folded = payload.snapshot;
        if (folded !== null && typeof folded === "object" && !Array.isArray(folded)) {
          // The events the snapshot folds, in their order: each callback gets what it would
          // have got from them, as one piece, and with the payload of such an event.
          const snapshot = /** @type {Record<string, unknown>} */ (folded);
          const commandId = payload.commandId;
          if (typeof snapshot.title === "string") {
            gotTitle(snapshot.title, { title: snapshot.title, commandId });
          }
          if (typeof snapshot.reasoning === "string" && snapshot.reasoning !== "") {
            gotReasoning(snapshot.reasoning, { reasoning: snapshot.reasoning, commandId });
          }
          if (typeof snapshot.content === "string" && snapshot.content !== "") {
            gotContent(snapshot.content, { content: snapshot.content, commandId });
          }
        }
        if (payload.done === true) {
          result.done = payload;
          if (typeof options.onDone === "function") options.onDone(payload, result);
          return result;
        }
      }
      // Not the terminal event: keep where the stream is, for a worker that is stopped now.
      // A stopped worker whose terminal event arrived but whose entry was not removed yet
      // resumes before that event and gets it again (the entry never holds a terminal id).
      const id = streamOf(event.id);
      if (id && !streamId) {
        streamId = id;
        running.add(id);
      }
      if (record && id === streamId) {
        record.save({ streamId, lastEventId: event.id, title: result.title,
          content: result.content, reasoning: result.reasoning, commandId: result.commandId });
      }
    }
  } catch (error) {
    if (error instanceof AxrisiError && error.partial === null) fail(error);
    throw error;
  } finally {
    if (streamId && (!from || kept || claimed)) running.delete(streamId);
    if (record) await record.remove(); // Ended, one way or another: nothing to resume.
  }
  return fail(new AxrisiError({ code: "network_error", error: "The stream ended without its last event." }));
}

/**
 * The shape of the original article's client: a text buffer, a hook that updates the UI for each
 * chunk, and a cleanup that aborts the request and releases what it held.
 *
 * @example
 * const processor = new StreamProcessor({ onUpdate: (text) => { output.textContent = text; } });
 * await processor.run({ baseUrl, token, command: "summarize", text });
 * // ... or on navigation: processor.cleanup();
 */
export class StreamProcessor {
  /**
   * @param {{onUpdate?: (text: string, chunk: string) => void}} [options]  `onUpdate` receives
   *   the whole text so far and the chunk just added.
   */
  constructor({ onUpdate } = {}) {
    /** The text received so far. @type {string} */
    this.buffer = "";
    this.onUpdate = onUpdate;
    /** @type {AbortController|null} */
    this._controller = null;
  }

  /**
   * Append a chunk of content and call `onUpdate` with the whole text.
   * @param {string} content
   */
  processChunk(content) {
    this.buffer += content;
    if (typeof this.onUpdate === "function") this.onUpdate(this.buffer, content);
  }

  /**
   * Stream a command into this processor: every content event goes through
   * {@link StreamProcessor#processChunk}. A previous run still going is cleaned up first.
   * `options.signal`, when given, also stops the run.
   * @param {StreamCommandOptions} options  As for {@link streamCommand}.
   * @returns {Promise<StreamResult>}
   */
  run(options) {
    this.cleanup();
    this.buffer = "";
    const controller = new AbortController();
    this._controller = controller;
    const outer = options.signal;
    if (outer) {
      if (outer.aborted) controller.abort(outer.reason);
      else outer.addEventListener("abort", () => controller.abort(outer.reason), { once: true });
    }
    const userOnContent = options.onContent;
    return streamCommand({
      ...options,
      signal: controller.signal,
      onContent: (piece, content, payload) => {
        this.processChunk(piece);
        if (typeof userOnContent === "function") userOnContent(piece, content, payload);
      },
    }).finally(() => {
      if (this._controller === controller) this._controller = null;
    });
  }

  /** Abort the running stream, if any (the server then closes its upstream), and release it. */
  cleanup() {
    if (this._controller) {
      this._controller.abort(abortError("The stream was cleaned up."));
      this._controller = null;
    }
  }
}

/**
 * Whether an event ends the stream: an `event: error`, or a data payload with `done: true`.
 * @param {SSEEvent} event
 * @returns {boolean}
 */
export function isTerminal(event) {
  if (event.event === "error") return true;
  const payload = parseData(event);
  return Boolean(payload && payload.done === true);
}

/**
 * The stream id of an event id: the part before its last `-` (`"1749186088941-3"` →
 * `"1749186088941"`), or `""` when it has no `-`.
 * @param {string} eventId
 * @returns {string}
 */
export function streamOf(eventId) {
  const dash = eventId ? eventId.lastIndexOf("-") : -1;
  return dash > 0 ? eventId.slice(0, dash) : "";
}

// ---------------------------------------------------------------------------------------------

/**
 * @typedef {(StreamOptions|ResumeOptions) & {baseUrl: string, fetch: typeof fetch, maxRetries: number}}
 *   Options
 */

/**
 * @param {StreamOptions|ResumeOptions} options
 * @param {PendingStream|null} from
 * @returns {Options}
 */
function normalize(options, from) {
  if (!options || typeof options !== "object") throw new TypeError("streamEvents needs an options object.");
  const baseUrl = baseUrlOf(options, from);
  const fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  const retries = options.maxRetries;
  const maxRetries = typeof retries === "number" && Number.isFinite(retries) ? Math.max(0, retries) : 3;
  return { ...options, baseUrl, fetch: fetchImpl, maxRetries };
}

/**
 * @param {{baseUrl?: string}} options
 * @param {PendingStream|null} from
 * @returns {string}
 */
function baseUrlOf(options, from) {
  const base = options.baseUrl ?? from?.baseUrl ?? globalThis.location?.origin ?? "";
  return String(base).replace(/\/+$/, "");
}

/**
 * @param {{token: StreamOptions["token"]}} opts
 * @returns {Promise<string>}
 */
async function tokenOf(opts) {
  const token = typeof opts.token === "function" ? await opts.token() : opts.token;
  return token ? String(token) : "";
}

/**
 * @param {Options} opts
 * @param {AbortSignal} signal
 * @returns {Promise<Response>}
 */
async function start(opts, signal) {
  const what = /** @type {StreamOptions} */ (opts); // Only a stream without `from` starts here.
  /** @type {Record<string, string|boolean>} */
  const body = { command: what.command, text: what.text };
  for (const name of /** @type {const} */ (["title", "language", "instruction"])) {
    const value = what[name];
    if (value !== undefined && value !== null && value !== "") body[name] = value;
  }
  // The flags go only when set, so that a request without them is what it always was.
  for (const name of /** @type {const} */ (["background", "reasoning"])) {
    if (what[name] === true) body[name] = true;
  }
  const response = await request(opts, `${opts.baseUrl}/api/run`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  }, signal);
  return response;
}

/**
 * Ask the server to stop the stream (`DELETE /api/streams/<streamId>`): with resume grace on,
 * closing the connection alone leaves the model running for the grace. Best effort: `keepalive`
 * lets it outlive a closing page, and its outcome is ignored.
 * @param {Options} opts
 * @param {string} streamId  `""`: not known yet (nothing to stop).
 * @returns {void}
 */
function stopStream(opts, streamId) {
  if (!streamId) return;
  tokenOf(opts).then((token) => {
    /** @type {Record<string, string>} */
    const headers = { ...(opts.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    return opts.fetch(`${opts.baseUrl}/api/streams/${encodeURIComponent(streamId)}`, {
      method: "DELETE", headers, keepalive: true, cache: "no-store", credentials: "omit",
    });
  }).catch(() => {});
}

/**
 * `GET /api/streams/<streamId>`: the events after `lastId` (all of them when it is `""`), folded
 * into one snapshot event with `catchup`.
 * @param {Options} opts
 * @param {string} streamId
 * @param {string} lastId
 * @param {boolean} catchup
 * @param {AbortSignal} signal
 * @returns {Promise<Response>}
 */
async function resume(opts, streamId, lastId, catchup, signal) {
  const query = catchup ? "?catchup=snapshot" : "";
  const url = `${opts.baseUrl}/api/streams/${encodeURIComponent(streamId)}${query}`;
  /** @type {Record<string, string>} */
  const headers = lastId ? { "Last-Event-ID": lastId } : {};
  return request(opts, url, { method: "GET", headers }, signal);
}

/**
 * @param {Options} opts
 * @param {string} url
 * @param {{method: string, headers: Record<string, string>, body?: string}} init
 * @param {AbortSignal} signal
 * @returns {Promise<Response>}
 */
async function request(opts, url, init, signal) {
  const response = await send(opts, url, init, signal, "text/event-stream");
  const type = response.headers.get("Content-Type") || "";
  // The MIME type's essence must be text/event-stream; parameters (a charset) are ignored, and
  // the body is UTF-8 whatever they say, as for EventSource.
  if (!/^text\/event-stream[\t ]*(;|$)/i.test(type) || !response.body) {
    response.body?.cancel().catch(() => {});
    throw new AxrisiError({
      status: response.status,
      code: "bad_response",
      error: `The server answered ${response.status} with ${type || "no content type"} instead of an event stream.`,
      requestId: requestIdOf(response),
    });
  }
  return response;
}

/**
 * Send one request with the bearer token and the caller's headers; resolves with a 2xx answer.
 * An HTTP error answer rejects with its {@link AxrisiError}, no answer at all with one of code
 * `"network_error"`, an abort with the signal's reason.
 * @param {{token: StreamOptions["token"], headers?: Record<string, string>, fetch: typeof fetch}} opts
 * @param {string} url
 * @param {{method: string, headers: Record<string, string>, body?: string}} init
 * @param {AbortSignal|undefined} signal
 * @param {string} accept  The `Accept` header, unless the caller's headers set one.
 * @returns {Promise<Response>}
 */
async function send(opts, url, init, signal, accept) {
  const token = await tokenOf(opts);
  /** @type {Record<string, string>} */
  const headers = { Accept: accept, ...(opts.headers || {}), ...init.headers };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await opts.fetch(url, {
      ...init,
      headers,
      signal,
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    if (signal?.aborted) throw error;
    // fetch rejects with a TypeError for network failures and CORS refusals alike.
    throw Object.assign(new AxrisiError({
      code: "network_error",
      error: "Could not reach the server (network error, or the server does not allow this origin).",
    }), { cause: error });
  }
  if (!response.ok) throw await httpError(response);
  return response;
}

/**
 * @param {Response} response
 * @returns {Promise<AxrisiError>}
 */
async function httpError(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // The body could not be read; the status still says what happened.
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null; // Not JSON (a proxy's HTML page, say): never a parse failure for the caller.
  }
  const code = body && typeof body.code === "string" ? body.code : `http_${response.status}`;
  const error = body && typeof body.error === "string"
    ? body.error
    : `The server answered ${response.status}${response.statusText ? ` ${response.statusText}` : ""}.`;
  return new AxrisiError({
    status: response.status,
    code,
    error,
    retryAfter: parseRetryAfter(response.headers.get("Retry-After")),
    requestId: requestIdOf(response),
  });
}

/**
 * @param {string|null} value
 * @returns {number|null}
 */
function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+\s*$/.test(value)) return parseInt(value, 10);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/**
 * @param {Response} response
 * @returns {string|null}
 */
function requestIdOf(response) {
  try {
    return response.headers.get("X-Request-ID");
  } catch {
    return null;
  }
}

/** @param {AxrisiError} error */
function isRetryableStatus(error) {
  // A resume that meets a draining or overloaded instance may land elsewhere on the next try.
  return error.code === "network_error" || [502, 503, 504].includes(error.status);
}

/**
 * @param {string} eventId
 * @returns {number|null}
 */
function sequenceOf(eventId) {
  const dash = eventId ? eventId.lastIndexOf("-") : -1;
  if (dash <= 0) return null;
  const tail = eventId.slice(dash + 1);
  return /^[0-9]+$/.test(tail) ? Number(tail) : null;
}

/**
 * Each event's parsed data, parsed once (isTerminal and streamCommand both look at it).
 * @type {WeakMap<SSEEvent, Record<string, unknown>|null>}
 */
const payloads = new WeakMap();

/**
 * The event's data parsed as JSON when it is a JSON object, else `null`.
 * @param {SSEEvent} event
 * @returns {Record<string, unknown>|null}
 */
function parseData(event) {
  const known = payloads.get(event);
  if (known !== undefined) return known;
  /** @type {unknown} */
  let payload = null;
  try {
    payload = JSON.parse(event.data);
  } catch {
    payload = null;
  }
  const object = payload !== null && typeof payload === "object" && !Array.isArray(payload)
    ? /** @type {Record<string, unknown>} */ (payload)
    : null;
  payloads.set(event, object);
  return object;
}

/**
 * @param {number} ms
 * @param {AbortSignal} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * @param {string} message
 * @returns {Error}
 */
function abortError(message) {
  try {
    return new DOMException(message, "AbortError");
  } catch {
    return Object.assign(new Error(message), { name: "AbortError" });
  }
}

/**
 * @param {AbortSignal|undefined} signal
 * @returns {unknown}
 */
function abortReason(signal) {
  if (!signal || !signal.aborted) return abortError("The stream was aborted.");
  return signal.reason ?? abortError("The stream was aborted.");
}

function inExtensionServiceWorker() {
  return typeof ServiceWorkerGlobalScope !== "undefined"
    && globalThis instanceof ServiceWorkerGlobalScope
    && typeof globalThis.chrome?.runtime?.getPlatformInfo === "function";
}

/**
 * @param {boolean|number|undefined} option
 * @returns {() => void}  Stops it.
 */
function startKeepAlive(option) {
  const wanted = option === undefined ? inExtensionServiceWorker() : Boolean(option);
  const runtime = globalThis.chrome?.runtime;
  const getPlatformInfo = runtime?.getPlatformInfo;
  if (!wanted || typeof getPlatformInfo !== "function") return () => {};
  const interval = typeof option === "number" && option > 0 ? option : KEEPALIVE_INTERVAL_MS;
  const timer = setInterval(() => {
    try {
      const pending = getPlatformInfo.call(runtime);
      if (pending && typeof pending.catch === "function") pending.catch(() => {});
    } catch {
      // The extension context is gone; nothing to keep alive.
    }
  }, interval);
  return () => clearInterval(timer);
}

// ---- Streams kept in chrome.storage.session ------------------------------------------------------

/**
 * The ids of the streams running in this context (started here, or taken up by resumePending):
 * resumePending leaves them alone.
 * @type {Set<string>}
 */
const running = new Set();

/**
 * The subset of `chrome.storage.session` used here.
 * @typedef {{get: (keys: null) => Promise<Record<string, unknown>>,
 *   set: (items: Record<string, unknown>) => Promise<void>,
 *   remove: (keys: string) => Promise<void>}} SessionArea
 */

/** @returns {SessionArea|null} */
function sessionArea() {
  try {
    const area = globalThis.chrome?.storage?.session;
    if (area && typeof area.get === "function" && typeof area.set === "function"
        && typeof area.remove === "function") return area;
  } catch {
    // The extension context is gone.
  }
  return null;
}

/**
 * @param {boolean|undefined} option
 * @returns {boolean}
 */
function persistWanted(option) {
  return option === undefined ? inExtensionServiceWorker() : Boolean(option);
}

/**
 * @param {unknown} value
 * @returns {value is PendingStream}
 */
function isPendingStream(value) {
  if (!value || typeof value !== "object") return false;
  const s = /** @type {Record<string, unknown>} */ (value);
  return typeof s.streamId === "string" && s.streamId !== ""
    && typeof s.lastEventId === "string" && streamOf(s.lastEventId) === s.streamId
    && sequenceOf(s.lastEventId) !== null
    && typeof s.baseUrl === "string" && typeof s.command === "string"
    && typeof s.title === "string" && typeof s.content === "string"
    && (s.reasoning === undefined || typeof s.reasoning === "string")
    && (s.commandId === null || typeof s.commandId === "number")
    && typeof s.startedAt === "number" && typeof s.updatedAt === "number";
}

/**
 * One stream's entry in `chrome.storage.session`. Each `save` writes the whole entry (id, last
 * event id and content together, so they always agree); one write is in flight at a time and
 * the latest state waits behind it, so a fast stream costs a write per storage round trip, not
 * per event. A write that fails (quota, a closing context) is skipped: the entry is a best effort.
 */
class StreamRecord {
  /**
   * @param {SessionArea} area
   * @param {boolean} saving  False: only remove an entry kept before (a resume with persist off).
   * @param {{baseUrl: string, command: string, tag: unknown, startedAt: number}} base
   * @param {string} streamId  The id of an entry kept before, or `""`.
   */
  constructor(area, saving, base, streamId) {
    this.area = area;
    this.saving = saving;
    this.base = { baseUrl: base.baseUrl, command: base.command, tag: base.tag ?? null,
      startedAt: base.startedAt };
    this.key = streamId ? STREAM_KEY_PREFIX + streamId : "";
    /** @type {PendingStream|null} */
    this.next = null;
    /** @type {Promise<void>|null} */
    this.flushing = null;
    this.closed = false;
  }

  /**
   * @param {{streamId: string, lastEventId: string, title: string, content: string,
   *   reasoning: string, commandId: number|null}} state
   */
  save(state) {
    if (this.closed || !this.saving) return;
    this.key = STREAM_KEY_PREFIX + state.streamId;
    this.next = { ...this.base, ...state, updatedAt: Date.now() };
    if (!this.flushing) this.flushing = this.flush();
  }

  /** @returns {Promise<void>} */
  async flush() {
    while (this.next) {
      const entry = this.next;
      this.next = null;
      try {
        await this.area.set({ [STREAM_KEY_PREFIX + entry.streamId]: entry });
      } catch {
        // Skipped; the next save tries again.
      }
    }
    this.flushing = null;
  }

  /** Remove the entry, after a write in flight (which would otherwise bring it back). */
  async remove() {
    this.closed = true;
    this.next = null;
    if (this.flushing) await this.flushing;
    if (!this.key) return;
    try {
      await this.area.remove(this.key);
    } catch {
      // The context is going away; session storage goes with the browser session anyway.
    }
  }
}

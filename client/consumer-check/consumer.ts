// A strict TypeScript consumer of the packed axrisi-client package: it uses every export with
// explicit types, checks that no type it touches is `any`, and holds deliberate misuses marked
// `@ts-expect-error`, so that `tsc` fails if a declaration were too loose (an unused
// `@ts-expect-error` is an error). It is type-checked only (`tsc --noEmit`), never run.
// tests/test_client_package.py packs client/, installs the tarball and compiles this with
// tsconfig.json (bundler, DOM) and tsconfig.nodenext.json (Node ESM resolution, WebWorker).

import {
  AxrisiError,
  DEFAULT_RETRY_MS,
  KEEPALIVE_INTERVAL_MS,
  MAX_RETRY_DELAY_MS,
  SSEParser,
  STREAM_KEY_PREFIX,
  StreamProcessor,
  isTerminal,
  listStreams,
  pendingStreams,
  resumePending,
  resumeStream,
  streamCommand,
  streamEvents,
  streamOf,
} from "axrisi-client";
import type {
  AxrisiErrorCode,
  AxrisiErrorDetails,
  ClientErrorCode,
  CommandName,
  CommandOptions,
  ConnectionOptions,
  ContentPayload,
  DonePayload,
  ErrorPayload,
  HttpErrorCode,
  ListOptions,
  OpenInfo,
  PartialResult,
  PendingStream,
  ReasoningPayload,
  ReconnectInfo,
  ResumeChooser,
  ResumedStream,
  ResumeOptions,
  ResumeStreamOptions,
  Snapshot,
  SnapshotPayload,
  SSEEvent,
  SSEParserHooks,
  StreamCommandOptions,
  StreamEntry,
  StreamErrorCode,
  StreamOptions,
  StreamPayload,
  StreamProcessorOptions,
  StreamResult,
  StreamState,
  TitlePayload,
  Usage,
} from "axrisi-client";

declare const token: string;
declare function render(markdown: string): void;

// ---- Type-level checks ------------------------------------------------------------------------

type IsAny<T> = 0 extends 1 & T ? true : false;
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2)
  ? true
  : false;
type Expect<T extends true> = T;

/** Every type a consumer gets from the package, one entry each: none may be `any`. */
type Surface = {
  DEFAULT_RETRY_MS: typeof DEFAULT_RETRY_MS;
  MAX_RETRY_DELAY_MS: typeof MAX_RETRY_DELAY_MS;
  KEEPALIVE_INTERVAL_MS: typeof KEEPALIVE_INTERVAL_MS;
  parserHooks: ConstructorParameters<typeof SSEParser>[0];
  parserRetry: SSEParser["retry"];
  parserLastEventId: SSEParser["lastEventId"];
  parserFeed: ReturnType<SSEParser["feed"]>;
  parserFeedArg: Parameters<SSEParser["feed"]>[0];
  parserFeedBytes: ReturnType<SSEParser["feedBytes"]>;
  parserFeedBytesArg: Parameters<SSEParser["feedBytes"]>[0];
  parserEnd: ReturnType<SSEParser["end"]>;
  event: SSEEvent;
  eventId: SSEEvent["id"];
  eventType: SSEEvent["event"];
  eventData: SSEEvent["data"];
  errorDetails: ConstructorParameters<typeof AxrisiError>[0];
  errorStatus: AxrisiError["status"];
  errorCode: AxrisiError["code"];
  errorSentence: AxrisiError["error"];
  errorRetryAfter: AxrisiError["retryAfter"];
  errorCommandId: AxrisiError["commandId"];
  errorRequestId: AxrisiError["requestId"];
  errorPartial: AxrisiError["partial"];
  streamEventsArg: Parameters<typeof streamEvents>[0];
  streamEventsYield: ReturnType<typeof streamEvents> extends AsyncGenerator<infer Y> ? Y : never;
  streamCommandArg: Parameters<typeof streamCommand>[0];
  streamCommandResult: Awaited<ReturnType<typeof streamCommand>>;
  resultDone: StreamResult["done"];
  resultCommandId: StreamResult["commandId"];
  token: StreamOptions["token"];
  onOpen: StreamOptions["onOpen"];
  onReconnect: StreamOptions["onReconnect"];
  reconnectCause: ReconnectInfo["cause"];
  onTitle: StreamCommandOptions["onTitle"];
  onContent: StreamCommandOptions["onContent"];
  onDone: StreamCommandOptions["onDone"];
  onError: StreamCommandOptions["onError"];
  onEvent: StreamCommandOptions["onEvent"];
  extraField: DonePayload["anything"];
  processorOptions: ConstructorParameters<typeof StreamProcessor>[0];
  processorBuffer: StreamProcessor["buffer"];
  processorRun: ReturnType<StreamProcessor["run"]>;
  processorRunArg: Parameters<StreamProcessor["run"]>[0];
  isTerminalArg: Parameters<typeof isTerminal>[0];
  isTerminalResult: ReturnType<typeof isTerminal>;
  streamOfArg: Parameters<typeof streamOf>[0];
  streamOfResult: ReturnType<typeof streamOf>;
  STREAM_KEY_PREFIX: typeof STREAM_KEY_PREFIX;
  persist: StreamCommandOptions["persist"];
  tag: StreamCommandOptions["tag"];
  pendingStreamsResult: Awaited<ReturnType<typeof pendingStreams>>;
  pendingStream: PendingStream;
  pendingTag: PendingStream["tag"];
  pendingCommandId: PendingStream["commandId"];
  resumePendingArg: Parameters<typeof resumePending>[0];
  resumePendingResult: Awaited<ReturnType<typeof resumePending>>;
  resumedResult: Awaited<ResumedStream["result"]>;
  resumeOptions: ResumeOptions;
  resumeToken: ResumeOptions["token"];
  resumeOnContent: ResumeOptions["onContent"];
  resumeOnError: ResumeOptions["onError"];
  connectionOptions: ConnectionOptions;
  commandOptions: CommandOptions;
  onReasoning: StreamCommandOptions["onReasoning"];
  resultReasoning: StreamResult["reasoning"];
  background: StreamOptions["background"];
  reasoning: StreamOptions["reasoning"];
  snapshot: StreamOptions["snapshot"];
  reasoningPayload: ReasoningPayload;
  snapshotPayload: SnapshotPayload;
  snapshotFolded: Snapshot;
  reasoningTokens: Usage["reasoningTokens"];
  listStreamsArg: Parameters<typeof listStreams>[0];
  listStreamsResult: Awaited<ReturnType<typeof listStreams>>;
  streamEntry: StreamEntry;
  streamEntryState: StreamEntry["state"];
  listOptions: ListOptions;
  resumeStreamArg: Parameters<typeof resumeStream>[0];
  resumeStreamResult: Awaited<ReturnType<typeof resumeStream>>;
  resumeStreamOnTitle: ResumeStreamOptions["onTitle"];
  pendingReasoning: PendingStream["reasoning"];
  partialReasoning: PartialResult["reasoning"];
};
type AnyInSurface = { [K in keyof Surface]: IsAny<Surface[K]> extends true ? K : never }[keyof Surface];
export const noAnyInSurface: Expect<Equal<AnyInSurface, never>> = true;

export type PreciseTypes = [
  Expect<Equal<Awaited<ReturnType<typeof streamCommand>>, StreamResult>>,
  Expect<Equal<StreamResult["done"], DonePayload>>,
  Expect<Equal<ReturnType<typeof streamEvents>, AsyncGenerator<SSEEvent, void, undefined>>>,
  Expect<Equal<SSEParser["retry"], number | null>>,
  Expect<Equal<AxrisiError["partial"], PartialResult | null>>,
  Expect<Equal<ReconnectInfo["cause"], unknown>>,
  Expect<Equal<DonePayload["anything"], unknown>>,
  Expect<Equal<DonePayload["done"], true>>,
  Expect<Equal<Usage["promptTokens"], number>>,
  Expect<Equal<Awaited<ReturnType<typeof pendingStreams>>, PendingStream[]>>,
  Expect<Equal<Awaited<ReturnType<typeof resumePending>>, ResumedStream[]>>,
  Expect<Equal<ResumedStream["result"], Promise<StreamResult>>>,
  Expect<Equal<Parameters<typeof resumePending>[0], ResumeChooser>>,
  Expect<Equal<PendingStream["tag"], unknown>>,
  Expect<Equal<ResumeOptions["baseUrl"], string | undefined>>,
  Expect<Equal<Awaited<ReturnType<typeof listStreams>>, StreamEntry[]>>,
  Expect<Equal<Parameters<typeof listStreams>[0], ListOptions>>,
  Expect<Equal<Awaited<ReturnType<typeof resumeStream>>, StreamResult>>,
  Expect<Equal<Parameters<typeof resumeStream>[0], ResumeStreamOptions>>,
  Expect<Equal<StreamEntry["streamId"], string>>,
  Expect<Equal<StreamEntry["background"], boolean>>,
  Expect<Equal<StreamResult["reasoning"], string>>,
  Expect<Equal<Usage["reasoningTokens"], number | undefined>>,
  Expect<Equal<SnapshotPayload["snapshot"], Snapshot>>,
  Expect<Equal<Snapshot["content"], string>>,
];

// ---- The parser -----------------------------------------------------------------------------

export function parse(bytes: Uint8Array): { events: SSEEvent[]; lastEventId: string; retry: number | null } {
  const comments: string[] = [];
  const hooks: SSEParserHooks = {
    onRetry: (ms: number) => void ms.toFixed(0),
    onComment: (text: string) => void comments.push(text.trim()),
  };
  const parser = new SSEParser(hooks);
  const events: SSEEvent[] = [
    ...parser.feed("id: 1749186088941-0\ndata: {\"title\":\"T\",\"commandId\":1749186088941}\n\n"),
    ...parser.feedBytes(bytes),
    ...parser.feedBytes(null),
    ...parser.end(),
  ];
  parser.lastEventId = "1749186088941-0"; // A new connection from a known id.
  const first: SSEEvent | undefined = events[0];
  const kinds: string[] = events.map((event) => `${event.id} ${event.event} ${event.data.length}`);
  void kinds;
  void first;
  // @ts-expect-error feed takes decoded text, not bytes (feedBytes does)
  parser.feed(bytes);
  // @ts-expect-error retry is the parser's output, read-only
  parser.retry = 5;
  new SSEParser();
  return { events, lastEventId: parser.lastEventId, retry: parser.retry };
}

// ---- streamEvents -----------------------------------------------------------------------------

function isContent(payload: StreamPayload): payload is ContentPayload {
  return typeof payload["content"] === "string" && !("error" in payload);
}

export async function iterate(signal: AbortSignal): Promise<string> {
  const opened: OpenInfo[] = [];
  const options: StreamOptions = {
    baseUrl: "https://axrisi.example",
    token: async () => token,
    command: "summarize",
    text: "A long article.",
    title: "An article",
    signal,
    maxRetries: 5,
    keepAlive: true,
    headers: { "X-Request-ID": "consumer-check" },
    fetch: (input, init) => fetch(input, init),
    onOpen: (info: OpenInfo) => void opened.push(info),
    onReconnect: ({ attempt, delay, lastEventId, cause }: ReconnectInfo) => {
      const why: string = cause instanceof AxrisiError ? cause.code : String(cause);
      console.warn(attempt, delay.toFixed(0), lastEventId, why);
    },
  };
  let content = "";
  for await (const event of streamEvents(options)) {
    const payload = JSON.parse(event.data) as StreamPayload;
    if (event.event === "error") {
      const failure = payload as ErrorPayload;
      const code: StreamErrorCode | (string & {}) = failure.code;
      throw new AxrisiError({ status: 200, code, error: failure.error, commandId: failure.commandId });
    }
    if (isContent(payload)) content += payload.content;
    if (isTerminal(event)) break;
    // @ts-expect-error an event has id, event and data, and no parsed payload
    void event.payload;
  }
  // @ts-expect-error text is required
  void streamEvents({ token, command: "summarize" });
  // @ts-expect-error the token is a string or a function that returns one
  void streamEvents({ token: 42, command: "summarize", text: "x" });
  return content;
}

// ---- streamCommand ------------------------------------------------------------------------------

export async function command(controller: AbortController): Promise<StreamResult> {
  const options: StreamCommandOptions = {
    token: () => token,
    command: "translate" satisfies CommandName,
    language: "French",
    text: "Hello",
    signal: controller.signal,
    onTitle: (title: string, payload: TitlePayload) => render(`# ${title} (${payload.commandId})`),
    onContent: (piece: string, soFar: string, payload: ContentPayload) => {
      render(soFar);
      void piece.length;
      void payload.commandId.toFixed(0);
    },
    onDone: (payload: DonePayload, result: StreamResult) => {
      const reason: string = payload.finishReason;
      const prompt: number | undefined = payload.usage?.promptTokens;
      const model: string | undefined = payload.model;
      const extra: unknown = payload["serverAddedLater"];
      console.info(reason, prompt, model, extra, result.content.length);
    },
    onError: (error: AxrisiError) => {
      const code: AxrisiErrorCode = error.code;
      const partial: PartialResult | null = error.partial;
      const wait: number | null = error.retryAfter;
      console.warn(code, error.error, error.status, wait, error.commandId, error.requestId, partial?.content);
      // @ts-expect-error retryAfter is null without a Retry-After header
      void error.retryAfter.toFixed(0);
    },
    onEvent: (event: SSEEvent) => void event.id,
  };
  const result: StreamResult = await streamCommand(options);
  const done: DonePayload = result.done;
  const commandId: number | null = result.commandId;
  void done;
  void commandId;
  // @ts-expect-error the content is a string
  const length: number = result.content;
  void length;
  // @ts-expect-error onContent's second argument is the content so far, a string
  void streamCommand({ token, command: "summarize", text: "x", onContent: (piece: string, soFar: number) => void [piece, soFar] });
  // @ts-expect-error an extra payload field is unknown until checked
  const model: string = result.done["serverAddedLater"];
  void model;
  return result;
}

// ---- AxrisiError ----------------------------------------------------------------------------------

export function errors(): AxrisiError[] {
  const details: AxrisiErrorDetails = { status: 429, code: "rate_limited", error: "Rate limit exceeded", retryAfter: 30 };
  const limited = new AxrisiError(details);
  const asError: Error = limited;
  const name: "AxrisiError" = limited.name;
  void [asError, name];
  const codes: [HttpErrorCode, StreamErrorCode, ClientErrorCode, AxrisiErrorCode] = [
    "unauthorized",
    "cancelled",
    "http_502",
    "a_code_from_a_newer_service",
  ];
  void codes;
  // @ts-expect-error the client's http_ codes end in a status number
  const badCode: ClientErrorCode = "http_bad";
  void badCode;
  // @ts-expect-error code and error are required
  void new AxrisiError({ status: 500 });
  // @ts-expect-error the fields are read-only
  limited.code = "internal";
  return [limited, new AxrisiError({ code: "network_error", error: "Offline." })];
}

// ---- StreamProcessor, isTerminal, streamOf, the constants -------------------------------------------

export function processor(): Promise<StreamResult> {
  const options: StreamProcessorOptions = { onUpdate: (text: string, chunk: string) => render(text + chunk) };
  const processor = new StreamProcessor(options);
  processor.processChunk("## Overview");
  const buffered: string = processor.buffer;
  void buffered;
  const running: Promise<StreamResult> = processor.run({
    token,
    command: "summarize",
    text: "x",
    onContent: (piece: string) => void piece,
  });
  processor.cleanup();
  new StreamProcessor().cleanup();
  // @ts-expect-error processChunk takes a string
  processor.processChunk(42);
  return running;
}

export function helpers(): [string, boolean, number[]] {
  const streamId: string = streamOf("1749186088941-3");
  const terminal: boolean = isTerminal({ id: "1749186088941-9", event: "message", data: "{\"done\":true}" });
  const delays: number[] = [DEFAULT_RETRY_MS, MAX_RETRY_DELAY_MS, KEEPALIVE_INTERVAL_MS];
  // @ts-expect-error isTerminal wants a whole event
  void isTerminal({ data: "{}" });
  return [streamId, terminal, delays];
}

// ---- Streams kept across a stopped extension service worker ------------------------------------

declare function show(tag: unknown, title: string, content: string): void;

export async function survive(controller: AbortController): Promise<string[]> {
  const job = { id: "job-1" };
  // Persisted explicitly, with a tag to know it again.
  const first: Promise<StreamResult> = streamCommand({
    token, command: "summarize", text: "x", persist: true, tag: job,
  });
  void first;
  const kept: PendingStream[] = await pendingStreams();
  const keys: string[] = kept.map((stream) => `${STREAM_KEY_PREFIX}${stream.streamId}`);
  const resumed: ResumedStream[] = await resumePending((stream: PendingStream) => {
    if (Date.now() - stream.updatedAt > 300_000) return null; // Expired on the service: forget it.
    show(stream.tag, stream.title, stream.content);
    const options: ResumeOptions = {
      token: async () => token,
      signal: controller.signal,
      onContent: (piece: string, content: string, payload: ContentPayload) => {
        show(stream.tag, stream.title, content);
        void [piece.length, payload.commandId];
      },
      onDone: (payload: DonePayload, result: StreamResult) => void [payload.finishReason, result.content],
      onError: (error: AxrisiError) => void error.code,
    };
    return options;
  });
  for (const { stream, result } of resumed) {
    const id: string = stream.lastEventId;
    const whole: StreamResult = await result;
    void [id, whole.content];
  }
  // The same options for every stream, from an async function too.
  const chooser: ResumeChooser = async () => ({ token, persist: false });
  await resumePending(chooser);
  await resumePending({ token, baseUrl: "https://axrisi.example" });
  // @ts-expect-error a resume needs the token (it is never kept)
  await resumePending({ onContent: (piece: string) => void piece });
  // @ts-expect-error a resumed stream does not start anything: no text
  await resumePending({ token, text: "x" });
  // @ts-expect-error nor a title callback: the title is the pending stream's
  await resumePending({ token, onTitle: (title: string) => void title });
  // @ts-expect-error the tag is unknown until checked
  const tagged: { id: string } = kept[0]?.tag;
  void tagged;
  return keys;
}

// ---- Reasoning, the caller's streams, reopening one with a snapshot ------------------------------

function isSnapshot(payload: StreamPayload): payload is SnapshotPayload {
  return typeof payload["snapshot"] === "object" && payload["snapshot"] !== null;
}

export async function think(controller: AbortController): Promise<[string, string]> {
  const result: StreamResult = await streamCommand({
    token,
    command: "explain",
    text: "Why is the sky blue?",
    reasoning: true,
    background: true,
    onReasoning: (piece: string, soFar: string, payload: ReasoningPayload) => {
      render(`<details>${soFar}</details>`);
      void [piece.length, payload.reasoning.length, payload.commandId.toFixed(0)];
    },
    onDone: (payload: DonePayload) => {
      const thought: number | undefined = payload.usage?.reasoningTokens;
      void thought;
    },
    signal: controller.signal,
  });
  // @ts-expect-error the flags are booleans
  void streamCommand({ token, command: "summarize", text: "x", reasoning: "yes" });
  // @ts-expect-error onReasoning's second argument is the reasoning so far, a string
  void streamCommand({ token, command: "summarize", text: "x", onReasoning: (piece: string, soFar: number) => void [piece, soFar] });
  // @ts-expect-error a resumed stream cannot ask for reasoning: that is chosen when it starts
  void resumePending({ token, reasoning: true });
  return [result.reasoning, result.content];
}

export async function reopen(controller: AbortController): Promise<StreamResult | null> {
  const listing: ListOptions = { baseUrl: "https://axrisi.example", token: async () => token,
    signal: controller.signal, headers: { "X-Request-ID": "consumer-check" } };
  let streams: StreamEntry[];
  try {
    streams = await listStreams(listing);
  } catch (error) {
    if (error instanceof AxrisiError && error.code === "unavailable") return null;
    throw error;
  }
  const running: StreamEntry[] = streams.filter((entry) => entry.state === ("running" satisfies StreamState));
  const newest: StreamEntry | undefined = running[0] ?? streams[0];
  if (!newest) return null;
  const started: Date = new Date(newest.startedAt);
  void [started, newest.title, newest.command, newest.lastEventId, newest.background];
  const options: ResumeStreamOptions = {
    baseUrl: "https://axrisi.example",
    token,
    streamId: newest.streamId,
    stopOnAbort: !newest.background,
    signal: controller.signal,
    tag: { reopened: newest.streamId },
    onTitle: (title: string, payload: TitlePayload) => render(`# ${title} (${payload.commandId})`),
    onReasoning: (piece: string, soFar: string) => render(soFar + piece),
    onContent: (piece: string, soFar: string, payload: ContentPayload) => render(soFar + piece + payload.content),
    onEvent: (event: SSEEvent) => {
      const payload = JSON.parse(event.data) as StreamPayload;
      if (isSnapshot(payload)) {
        const folded: Snapshot = payload.snapshot;
        const title: string | undefined = folded.title;
        const thought: string | undefined = folded.reasoning;
        render(`${title ?? ""}${thought ?? ""}${folded.content}`);
      }
    },
  };
  const result: StreamResult = await resumeStream(options);
  // @ts-expect-error resumeStream needs the stream's id
  void resumeStream({ token });
  // @ts-expect-error it reads an existing stream: no text
  void resumeStream({ token, streamId: newest.streamId, text: "x" });
  // @ts-expect-error listStreams needs the token
  void listStreams({ baseUrl: "https://axrisi.example" });
  // @ts-expect-error an entry's startedAt is a number of milliseconds
  const when: string = newest.startedAt;
  void when;
  // The raw iterator can ask for snapshots too.
  for await (const event of streamEvents({ token, command: "summarize", text: "x", snapshot: true })) {
    void event.id;
  }
  return result;
}

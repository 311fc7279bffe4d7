// The demo page at GET /: streams a command with axrisi-client.js and renders the answer as
// Markdown while it arrives. Model output is untrusted: marked turns it into HTML, DOMPurify
// removes every script, event handler attribute and javascript: URL from that HTML before it
// touches the page, and the page's Content-Security-Policy (script-src 'self') would stop an
// injected script even if the sanitizer missed one. A reasoning model's thinking ("Show
// reasoning") is shown folded above the answer as plain text (textContent), never as markup.
//
// "Your streams" lists the user's running and recent streams (GET /api/streams); Reopen reads
// one from its start (resumeStream: one snapshot event, then live), so an answer started with
// "Keep generating in the background" can be read after leaving the page and coming back.

import { AxrisiError, listStreams, resumeStream, streamCommand } from "./axrisi-client.js";
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("run-form"),
  token: $("token"),
  command: $("command"),
  commandHelp: $("command-help"),
  languageField: $("language-field"),
  language: $("language"),
  instructionField: $("instruction-field"),
  instruction: $("instruction"),
  title: $("title"),
  text: $("text"),
  start: $("start"),
  stop: $("stop"),
  state: $("state"),
  error: $("error"),
  ttft: $("ttft"),
  tps: $("tps"),
  events: $("events"),
  model: $("model"),
  usage: $("usage"),
  quota: $("quota"),
  answer: $("answer"),
  answerTitle: $("answer-title"),
  showReasoning: $("show-reasoning"),
  background: $("background"),
  reasoning: $("reasoning"),
  reasoningText: $("reasoning-text"),
  streams: $("streams"),
  streamsStatus: $("streams-status"),
  refreshStreams: $("refresh-streams"),
};

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "dialog"],
  FORBID_ATTR: ["style", "srcset", "formaction"],
  ALLOW_DATA_ATTR: false,
};

// Links in an answer open in a new tab and tell the target nothing about this page.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

/** Markdown to sanitized HTML: the only way model output reaches the DOM as markup. */
export function renderMarkdown(markdown) {
  const html = marked.parse(markdown, { async: false, gfm: true, breaks: false });
  return DOMPurify.sanitize(html, SANITIZE);
}

let catalog = new Map();
let controller = null;
let run = null;

const isRunning = (state) => state === "connecting" || state === "streaming";

function setState(state, message = "") {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  document.body.dataset.state = state;
  const running = isRunning(state);
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  // One answer at a time: Stop (or its end) first, as for Start.
  for (const button of ui.streams.querySelectorAll("button")) button.disabled = running;
  ui.answer.setAttribute("aria-busy", running ? "true" : "false");
  ui.error.hidden = !message;
  ui.error.textContent = message;
}

// ---- The command catalog ------------------------------------------------------------------

let catalogTimer = null;
let catalogToken = null;

async function loadCatalog() {
  const token = ui.token.value.trim();
  if (!token || token === catalogToken) return;
  catalogToken = token;
  ui.commandHelp.textContent = "Loading the commands…";
  try {
    const response = await fetch("/api/commands", {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      catalogToken = null;
      const sentence = body?.code === "unauthorized"
        ? "The server refused this token."
        : body?.error || `The server answered ${response.status}.`;
      ui.commandHelp.textContent = `Could not load the commands: ${sentence}`;
      return;
    }
    fillCatalog(body.commands || []);
    showQuota();
    refreshStreams();
  } catch {
    catalogToken = null;
    ui.commandHelp.textContent = "Could not reach the server to load the commands.";
  }
}

function fillCatalog(commands) {
  const previous = ui.command.value || "summarize";
  catalog = new Map(commands.map((c) => [c.name, c]));
  ui.command.replaceChildren(...commands.map((c) => {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = c.label || c.name;
    return option;
  }));
  ui.command.value = catalog.has(previous) ? previous : commands[0]?.name ?? "";
  ui.command.disabled = commands.length === 0;
  showCommandFields();
}

function showCommandFields() {
  const command = catalog.get(ui.command.value);
  const requires = new Set(command?.requires || []);
  ui.commandHelp.textContent = command?.description || "";
  ui.languageField.hidden = !requires.has("language");
  ui.language.required = requires.has("language");
  ui.instructionField.hidden = !requires.has("instruction");
  ui.instruction.required = requires.has("instruction");
}

ui.token.addEventListener("input", () => {
  clearTimeout(catalogTimer);
  catalogTimer = setTimeout(loadCatalog, 300);
});
ui.token.addEventListener("change", loadCatalog);
ui.command.addEventListener("change", showCommandFields);

// ---- What is left of the user's limits (GET /api/usage) ------------------------------------

async function showQuota() {
  const token = ui.token.value.trim();
  if (!token) return;
  try {
    const response = await fetch("/api/usage", {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
    });
    if (!response.ok) return;
    const usage = await response.json();
    const first = usage.rate?.[0];
    const parts = first ? [`${first.remaining} (${first.limit})`] : [];
    if (usage.tokens?.quota != null) {
      parts.push(`${usage.tokens.quota - usage.tokens.used} of ${usage.tokens.quota} tokens`);
    }
    ui.quota.textContent = parts.join(", ") || "–";
  } catch {
    // The figure is a convenience: leave the last one shown.
  }
}

// ---- Streaming ------------------------------------------------------------------------------

function missingField() {
  if (!ui.token.value.trim()) return [ui.token, "Enter a token first."];
  if (!ui.command.value) return [ui.token, "The commands have not loaded yet: check the token."];
  if (!ui.text.value.trim()) return [ui.text, "Enter a text to work on."];
  if (ui.language.required && !ui.language.value.trim()) {
    return [ui.language, "This command needs a target language."];
  }
  if (ui.instruction.required && !ui.instruction.value.trim()) {
    return [ui.instruction, "This command needs an instruction."];
  }
  return null;
}

function start() {
  const missing = missingField();
  if (missing) {
    setState(ui.state.dataset.state === "idle" ? "idle" : ui.state.dataset.state, missing[1]);
    missing[0].focus();
    return;
  }
  const command = ui.command.value;
  const requires = new Set(catalog.get(command)?.requires || []);
  follow((callbacks) => streamCommand({
    ...callbacks,
    command,
    text: ui.text.value,
    title: ui.title.value.trim() || undefined,
    language: requires.has("language") ? ui.language.value.trim() : undefined,
    instruction: requires.has("instruction") ? ui.instruction.value.trim() : undefined,
    reasoning: ui.showReasoning.checked || undefined,
    background: ui.background.checked || undefined,
  }));
}

/** Read one of the user's streams from its start: one snapshot, then live (GET /api/streams/<id>). */
function reopen(streamId) {
  if (!ui.token.value.trim()) return;
  follow((callbacks) => resumeStream({ ...callbacks, streamId }));
}

/**
 * Show a stream in the answer area: `open(callbacks)` starts or reopens it with the page's
 * callbacks (and its token, origin and abort signal) and returns its promise.
 */
function follow(open) {
  controller?.abort();
  controller = new AbortController();
  const mine = controller;
  const started = performance.now();
  let firstAt = 0;
  let count = 0;
  let pending = false;
  let content = "";

  const render = () => {
    pending = false;
    if (mine === controller) ui.answer.innerHTML = renderMarkdown(content);
  };
  const scheduleRender = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(render);
    }
  };
  const showReasoning = (reasoning) => {
    if (mine !== controller) return;
    ui.reasoning.hidden = !reasoning;
    ui.reasoningText.textContent = reasoning;
  };

  ui.answer.replaceChildren();
  ui.answerTitle.textContent = "";
  showReasoning("");
  ui.reasoning.open = false;
  ui.ttft.textContent = "–";
  ui.tps.textContent = "–";
  ui.events.textContent = "0";
  ui.model.textContent = "–";
  ui.usage.textContent = "–";
  setState("connecting");

  run = open({
    baseUrl: location.origin,
    token: ui.token.value.trim(),
    signal: mine.signal,
    onOpen: () => { if (mine === controller) setState("streaming"); },
    onTitle: (title) => {
      if (mine !== controller) return;
      ui.answerTitle.textContent = title;
      refreshStreams(); // It is listed now.
    },
    onReasoning: (_piece, soFar) => showReasoning(soFar),
    onContent: (_piece, soFar) => {
      const now = performance.now();
      count += 1;
      if (count === 1) {
        firstAt = now;
        ui.ttft.textContent = `${Math.round(now - started)} ms`;
      } else if (now > firstAt) {
        ui.tps.textContent = ((count - 1) / ((now - firstAt) / 1000)).toFixed(1);
      }
      ui.events.textContent = String(count);
      content = soFar;
      scheduleRender();
    },
    onDone: (payload, result) => {
      content = result.content;
      render();
      showReasoning(result.reasoning);
      if (count === 1 || performance.now() <= firstAt) ui.tps.textContent = String(count);
      if (typeof payload.model === "string") ui.model.textContent = payload.model;
      const usage = payload.usage;
      if (usage) ui.usage.textContent = `${usage.promptTokens} + ${usage.completionTokens}`;
      setState("done");
      showQuota();
      refreshStreams();
    },
    onError: (error) => {
      content = error.partial?.content ?? content;
      render();
      if (error.partial) showReasoning(error.partial.reasoning);
      setState("error", `${error.error} (${error.code})`);
      refreshStreams();
    },
  });
  run.catch((error) => {
    if (mine.signal.aborted) return; // Stop pressed: the state already says so.
    if (!(error instanceof AxrisiError)) setState("error", String(error?.message || error));
  });
}

function stop() {
  if (!controller || controller.signal.aborted) return;
  controller.abort();
  setState("stopped");
  refreshStreams();
}

// ---- The user's streams (GET /api/streams) ----------------------------------------------------

let listing = 0;

/** List the user's running and recent streams, each with a Reopen button. */
async function refreshStreams() {
  const token = ui.token.value.trim();
  if (!token) return;
  const mine = ++listing;
  let streams;
  try {
    streams = await listStreams({ baseUrl: location.origin, token });
  } catch (error) {
    if (mine !== listing) return;
    const why = error instanceof AxrisiError ? `${error.error} (${error.code})` : String(error);
    ui.streamsStatus.textContent = `Could not list your streams: ${why}`;
    return;
  }
  if (mine !== listing) return; // A later refresh answered first, or will.
  const running = isRunning(ui.state.dataset.state);
  ui.streams.replaceChildren(...streams.map((stream) => streamItem(stream, running)));
  ui.streamsStatus.textContent = streams.length === 0
    ? "No streams yet: the ones you start are listed here while they can be read again."
    : `${streams.length} stream${streams.length === 1 ? "" : "s"}, newest first.`;
}

function streamItem(stream, running) {
  const item = document.createElement("li");
  item.dataset.streamId = stream.streamId;
  item.dataset.state = stream.state;
  const title = document.createElement("span");
  title.className = "stream-title";
  title.textContent = stream.title || stream.command;
  const meta = document.createElement("span");
  meta.className = "stream-meta";
  const when = new Date(stream.startedAt).toLocaleTimeString();
  meta.textContent = [stream.command, stream.state, stream.background ? "background" : "", when]
    .filter(Boolean).join(" · ");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary reopen";
  button.textContent = "Reopen";
  button.setAttribute("aria-label", `Reopen “${title.textContent}” (${stream.state})`);
  button.disabled = running;
  button.addEventListener("click", () => reopen(stream.streamId));
  item.append(title, meta, button);
  return item;
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
ui.stop.addEventListener("click", stop);
ui.refreshStreams.addEventListener("click", refreshStreams);

// ---- Start-up -------------------------------------------------------------------------------

const devToken = document.querySelector('meta[name="axrisi-dev-token"]')?.content;
if (devToken && !ui.token.value) ui.token.value = devToken;
setState("idle");
if (ui.token.value) loadCatalog();

// For tests and the curious: the page's last run.
globalThis.axrisiDemo = { renderMarkdown, get run() { return run; } };

// The side panel: a view of the service worker's job. It connects a port to the worker, gets the
// job's state on it, then every change. The answer (and a reasoning model's thinking, folded
// above it) is shown as plain text (textContent), so no markup from the model can run here.
//
// When Chrome stops the worker, the port disconnects. If a stream was running, the panel connects
// again at once: that is an event for the worker, so Chrome starts it again, and the new worker
// takes the stream up from chrome.storage.session and sends the whole state on the new port. When
// nothing runs, it does not (an idle worker may stay stopped), and connects again when a worker
// says that something changed.
//
// Below the answer, the user's running and recent answers (GET /api/streams, with the server and
// token of the options page), listed here with the client's `listStreams`: a new panel, or one on
// another device with the same account, finds them there. Reopen asks the worker to read one
// from its start, in place of the job.

import { listStreams } from "./axrisi-client.js";

const PANEL_PORT = "axrisi-panel";
const DEFAULTS = { serverUrl: "http://127.0.0.1:8000", token: "" };
const $ = (id) => document.getElementById(id);

let job = null;
let port = null;
/** Connections in a row that ended before the worker answered (backs the retries off). */
let failures = 0;

const isRunning = (state) => state?.status === "connecting" || state?.status === "streaming";

function show(state) {
  if (!state) return;
  const before = job;
  job = state;
  $("title").textContent = state.title || "Axrisi";
  $("state").textContent = state.status;
  document.body.dataset.state = state.status;
  $("answer").textContent = state.content;
  $("reasoning").hidden = !state.reasoning;
  $("reasoning-text").textContent = state.reasoning || "";
  const running = isRunning(state);
  $("answer").setAttribute("aria-busy", running ? "true" : "false");
  $("stop").disabled = !running;
  $("error").hidden = !state.error;
  $("error").textContent = state.error || "";
  for (const button of $("streams").querySelectorAll("button")) button.disabled = running;
  // A stream started, reopened or ended: the list has changed (not on every piece of text).
  if (before?.status !== state.status || before?.commandId !== state.commandId) refreshStreams();
}

function connect() {
  if (port) return;
  const mine = chrome.runtime.connect({ name: PANEL_PORT });
  port = mine;
  let answered = false;
  mine.onMessage.addListener((message) => {
    if (message?.type !== "axrisi:job") return;
    answered = true;
    failures = 0;
    show(message.job);
  });
  mine.onDisconnect.addListener(() => {
    void chrome.runtime.lastError; // Read, so that Chrome does not log it as unchecked.
    if (port === mine) port = null;
    if (!answered) failures++;
    document.body.dataset.disconnects = String(Number(document.body.dataset.disconnects || 0) + 1);
    // The worker was stopped. Connecting again starts it, and it takes the stream up.
    if (isRunning(job)) setTimeout(connect, failures ? Math.min(5000, 100 * 2 ** failures) : 0);
  });
}

// ---- The user's answers (GET /api/streams) ----------------------------------------------------

let listing = 0;

async function refreshStreams() {
  const mine = ++listing;
  const { serverUrl, token } = await chrome.storage.local.get(DEFAULTS);
  if (mine !== listing) return;
  if (!token) {
    $("streams").replaceChildren();
    $("streams-status").textContent = "Set the server URL and a token in the options first.";
    return;
  }
  let streams;
  try {
    streams = await listStreams({ baseUrl: serverUrl, token });
  } catch (error) {
    if (mine !== listing) return;
    const why = error?.error ? `${error.error} (${error.code})` : String(error?.message || error);
    $("streams-status").textContent = `Could not list your answers: ${why}`;
    return;
  }
  if (mine !== listing) return; // A later refresh answered first, or will.
  const running = isRunning(job);
  $("streams").replaceChildren(...streams.map((stream) => streamItem(stream, running)));
  $("streams-status").textContent = streams.length === 0 ? "None yet." : "";
  document.body.dataset.listed = String(streams.length);
}

function streamItem(stream, running) {
  const item = document.createElement("li");
  item.dataset.streamId = stream.streamId;
  item.dataset.state = stream.state;
  const title = document.createElement("span");
  title.className = "stream-title";
  title.textContent = stream.title || stream.command;
  const state = document.createElement("span");
  state.className = "stream-state";
  state.textContent = stream.state;
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Reopen";
  button.setAttribute("aria-label", `Reopen “${title.textContent}” (${stream.state})`);
  button.disabled = running;
  button.addEventListener("click", () => {
    chrome.runtime.sendMessage({ type: "axrisi:reopen", streamId: stream.streamId }).catch(() => {});
  });
  item.append(title, state, button);
  return item;
}

chrome.runtime.onMessage.addListener((message, sender) => {
  if (sender.id === chrome.runtime.id && message?.type === "axrisi:changed") connect();
});
$("stop").addEventListener("click", () => {
  chrome.runtime.sendMessage({ type: "axrisi:stop" }).catch(() => {});
});
$("refresh").addEventListener("click", refreshStreams);
connect();
refreshStreams();

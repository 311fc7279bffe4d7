// The extension's service worker: a context-menu entry on selected text, and the stream itself.
//
// The stream runs here, not in the side panel, so that it goes on while the panel is closed and
// reopened. The panel is a view: it connects a port, gets the job's state on it and then every
// change. While a stream runs, axrisi-client.js's `keepAlive` calls a cheap extension API every
// 25 s, because Chrome stops an idle service worker after 30 s. (EventSource is no use here: it
// cannot POST or send an Authorization header.)
//
// Chrome may still stop this worker mid-stream (a crash, an update, memory pressure, DevTools),
// and its fetch goes with it. The client keeps the running stream's id, last event id and text so
// far in chrome.storage.session (`persist`), and when the worker starts again (for the panel's
// port reconnecting, say) `resumePending` at the top level below takes the stream up where it
// was: the panel ends with the whole answer, each piece once.
//
// Streams ask for the model's reasoning (`reasoning: true`): a reasoning model's thinking goes to
// the panel with the answer, which shows it folded above it (other models send none). The panel
// also lists the user's running and recent answers (GET /api/streams); reopening one ("axrisi:
// reopen") reads it here from its start with `resumeStream` (one snapshot event, then live),
// like a new run.

import * as client from "./axrisi-client.js";

const { streamCommand, pendingStreams, resumePending, resumeStream } = client;

const MENU_ID = "axrisi-summarize";
const PANEL_PORT = "axrisi-panel";
const DEFAULTS = { serverUrl: "http://127.0.0.1:8000", token: "" };

/**
 * @type {{status: string, title: string, content: string, reasoning: string, error: string,
 *   commandId: number|null, resumed: boolean, reopened: boolean}}
 */
let job = { status: "idle", title: "", content: "", reasoning: "", error: "", commandId: null,
  resumed: false, reopened: false };
/** The running stream's controller; a stream whose controller is no longer this one is old. */
let controller = null;
/** The side panels' ports. */
const panels = new Set();

const isRunning = (state) => state?.status === "connecting" || state?.status === "streaming";

function publish(patch) {
  job = { ...job, ...patch };
  for (const port of panels) {
    try {
      port.postMessage({ type: "axrisi:job", job });
    } catch {
      panels.delete(port); // Disconnected meanwhile.
    }
  }
  // A panel without a port (it let go while idle, and Chrome stopped this worker since) connects
  // again on this; nobody listening is fine.
  if (panels.size === 0) chrome.runtime.sendMessage({ type: "axrisi:changed" }).catch(() => {});
  // Keep the last state for a panel opened after this worker was stopped and restarted.
  if (patch.status && patch.status !== "streaming") chrome.storage.session.set({ job }).catch(() => {});
}

async function savedJob() {
  const saved = await chrome.storage.session.get("job").catch(() => ({}));
  return saved.job || null;
}

/**
 * Follow a stream's promise to the job's end state, unless a newer stream took over.
 * @param {AbortController} mine
 * @param {Promise<import("./axrisi-client.js").StreamResult>} run
 */
async function follow(mine, run) {
  try {
    const result = await run;
    if (controller === mine) {
      publish({ status: "done", title: result.title, content: result.content,
        reasoning: result.reasoning });
    }
    return result;
  } catch (error) {
    if (controller !== mine) return null;
    if (mine.signal.aborted) {
      publish({ status: "stopped" });
    } else {
      const sentence = error?.error ? `${error.error} (${error.code})` : String(error?.message || error);
      publish({ status: "error", error: sentence });
    }
    return null;
  } finally {
    if (controller === mine) controller = null;
  }
}

/** The callbacks of a stream, started here or taken up after a restart. */
function callbacks(mine) {
  const update = (patch) => { if (controller === mine) publish(patch); };
  return {
    signal: mine.signal,
    keepAlive: true,
    persist: true,
    onOpen: () => update({ status: "streaming" }),
    onContent: (_piece, content) => update({ content }),
    onReasoning: (_piece, reasoning) => update({ reasoning }),
  };
}

/**
 * When this worker starts: take up the stream that was running when Chrome stopped the last
 * one (the newest, if several were kept; the others are forgotten). Resolves once that is
 * decided, not when the stream ends.
 */
async function takeUpStoppedStream() {
  const newest = (await pendingStreams()).at(-1);
  let mine = null;
  const resumed = await resumePending(async (stream) => {
    if (stream.streamId !== newest?.streamId) return null;
    const { token } = await chrome.storage.local.get(DEFAULTS);
    if (!token) return null;
    mine = new AbortController();
    controller = mine;
    publish({ status: "streaming", title: stream.title, content: stream.content,
      reasoning: stream.reasoning, error: "", commandId: stream.commandId, resumed: true,
      reopened: false });
    return { ...callbacks(mine), token };
  });
  if (resumed.length > 0 && mine) {
    follow(mine, resumed[0].result);
    return;
  }
  // Nothing to take up: a job that was running when the worker stopped cannot go on.
  const saved = await savedJob();
  if (isRunning(saved) && !controller) {
    job = saved;
    publish({ status: "error",
      error: "The stream stopped with the extension's service worker and could not be taken up." });
  }
}

const ready = takeUpStoppedStream().catch(() => {});

/**
 * Run a command on a text with the server and token from the options page; the state goes to
 * every open side panel as it changes. A run still going is stopped first.
 * @param {{text: string, title?: string, command?: string}} request
 * @returns {Promise<import("./axrisi-client.js").StreamResult|null>} null when stopped or failed.
 */
async function summarize({ text, title, command = "summarize" }) {
  await ready; // A stream taken up after a restart is the one a new run replaces.
  controller?.abort();
  const mine = new AbortController();
  controller = mine;
  const { serverUrl, token } = await chrome.storage.local.get(DEFAULTS);
  if (controller !== mine) return null; // Another run started meanwhile.
  if (!token) {
    controller = null;
    publish(noToken());
    return null;
  }
  publish({ status: "connecting", title: title || "", content: "", reasoning: "", error: "",
    commandId: null, resumed: false, reopened: false });
  return follow(mine, streamCommand({
    ...callbacks(mine),
    baseUrl: serverUrl,
    token,
    command,
    text,
    title,
    reasoning: true,
    onTitle: (t, payload) => {
      if (controller === mine) publish({ title: t, commandId: payload.commandId ?? null });
    },
  }));
}

/**
 * Read one of the user's streams (from the panel's list) from its start, in place of the job: the
 * title, reasoning and content so far come in one snapshot, then the rest live.
 * @param {{streamId: string}} request
 * @returns {Promise<import("./axrisi-client.js").StreamResult|null>} null when stopped or failed.
 */
async function reopen({ streamId }) {
  await ready;
  controller?.abort();
  const mine = new AbortController();
  controller = mine;
  const { serverUrl, token } = await chrome.storage.local.get(DEFAULTS);
  if (controller !== mine) return null;
  if (!token) {
    controller = null;
    publish(noToken());
    return null;
  }
  publish({ status: "connecting", title: "", content: "", reasoning: "", error: "",
    commandId: Number(streamId), resumed: false, reopened: true });
  return follow(mine, resumeStream({
    ...callbacks(mine),
    baseUrl: serverUrl,
    token,
    streamId,
    onTitle: (t) => { if (controller === mine) publish({ title: t }); },
  }));
}

function noToken() {
  return { status: "error", title: "", content: "", reasoning: "", commandId: null,
    resumed: false, reopened: false,
    error: "Set the server URL and a token in the extension's options first." };
}

function stop() {
  controller?.abort();
}

function onContextMenu(info, tab) {
  if (info.menuItemId !== MENU_ID || !info.selectionText) return;
  // sidePanel.open must be called while the click's user gesture holds: before any await.
  if (tab?.windowId !== undefined && chrome.sidePanel?.open) {
    chrome.sidePanel.open({ windowId: tab.windowId }).catch(() => {});
  }
  summarize({ text: info.selectionText, title: tab?.title }).catch(() => {});
}

/** A panel connected: send it the state, then every change, until it disconnects. */
async function onPanel(port) {
  await ready;
  const state = job.status === "idle" ? (await savedJob()) || job : job;
  try {
    // Now, with no await between this state and joining `panels`: no change comes in between.
    port.postMessage({ type: "axrisi:job", job: job.status === "idle" ? state : job });
    panels.add(port);
  } catch {
    // The panel went away meanwhile.
  }
}

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.create({
    id: MENU_ID,
    title: "Summarize with Axrisi",
    contexts: ["selection"],
  });
  chrome.sidePanel?.setPanelBehavior?.({ openPanelOnActionClick: true }).catch(() => {});
});

chrome.contextMenus.onClicked.addListener(onContextMenu);

chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== PANEL_PORT || port.sender?.id !== chrome.runtime.id) return;
  port.onDisconnect.addListener(() => panels.delete(port));
  onPanel(port);
});

chrome.runtime.onMessage.addListener((message, sender) => {
  if (sender.id !== chrome.runtime.id) return false;
  // After a restart the stream is taken up first, then stopped.
  if (message?.type === "axrisi:stop") ready.then(stop);
  if (message?.type === "axrisi:reopen" && typeof message.streamId === "string") {
    reopen({ streamId: message.streamId }).catch(() => {});
  }
  return false;
});

// For the devtools console (and the tests): `await axrisi.summarize({text: "..."})`.
globalThis.axrisi = { summarize, reopen, stop, onContextMenu, state: () => job, ready, client };

// The extension's service worker: a context-menu entry on selected text, and the stream itself.
//
// The stream runs here, not in the side panel, so that it goes on while the panel is closed and
// reopened. The panel is a view: it asks for the job's state when it opens, and every change is
// sent to it as a runtime message. While a stream runs, axrisi-client.js's `keepAlive` calls a
// cheap extension API every 25 s, because Chrome stops an idle service worker after 30 s.
// (EventSource is no use here: it cannot POST or send an Authorization header.)

import * as client from "./axrisi-client.js";

const { streamCommand } = client;

const MENU_ID = "axrisi-summarize";
const DEFAULTS = { serverUrl: "http://127.0.0.1:8000", token: "" };

/** @type {{status: string, title: string, content: string, error: string, commandId: number|null}} */
let job = { status: "idle", title: "", content: "", error: "", commandId: null };
let controller = null;

function publish(patch) {
  job = { ...job, ...patch };
  // To every open extension page (the side panel); nobody listening is fine.
  chrome.runtime.sendMessage({ type: "axrisi:job", job }).catch(() => {});
  // Keep the last state for a panel opened after this worker was stopped and restarted.
  if (patch.status && patch.status !== "streaming") chrome.storage.session.set({ job }).catch(() => {});
}

async function currentJob() {
  if (job.status !== "idle") return job;
  const saved = await chrome.storage.session.get("job").catch(() => ({}));
  return saved.job || job;
}

/**
 * Run a command on a text with the server and token from the options page; the state goes to
 * every open side panel as it changes. A run still going is stopped first.
 * @param {{text: string, title?: string, command?: string}} request
 * @returns {Promise<import("./axrisi-client.js").StreamResult|null>} null when stopped or failed.
 */
async function summarize({ text, title, command = "summarize" }) {
  controller?.abort();
  const mine = new AbortController();
  controller = mine;
  const { serverUrl, token } = await chrome.storage.local.get(DEFAULTS);
  if (!token) {
    publish({ status: "error", title: "", content: "", commandId: null,
      error: "Set the server URL and a token in the extension's options first." });
    return null;
  }
  publish({ status: "connecting", title: title || "", content: "", error: "", commandId: null });
  try {
    const result = await streamCommand({
      baseUrl: serverUrl,
      token,
      command,
      text,
      title,
      signal: mine.signal,
      keepAlive: true,
      onOpen: () => publish({ status: "streaming" }),
      onTitle: (t, payload) => publish({ title: t, commandId: payload.commandId ?? null }),
      onContent: (_piece, content) => publish({ content }),
    });
    publish({ status: "done", content: result.content });
    return result;
  } catch (error) {
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

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.create({
    id: MENU_ID,
    title: "Summarize with Axrisi",
    contexts: ["selection"],
  });
  chrome.sidePanel?.setPanelBehavior?.({ openPanelOnActionClick: true }).catch(() => {});
});

chrome.contextMenus.onClicked.addListener(onContextMenu);

chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
  if (sender.id !== chrome.runtime.id) return false;
  if (message?.type === "axrisi:stop") stop();
  if (message?.type === "axrisi:get") {
    currentJob().then(sendResponse);
    return true; // The answer comes asynchronously.
  }
  return false;
});

// For the devtools console (and the tests): `await axrisi.summarize({text: "..."})`.
globalThis.axrisi = { summarize, stop, onContextMenu, state: () => job, client };

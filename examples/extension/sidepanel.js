// The side panel: a view of the service worker's job. It connects a port to the worker, gets the
// job's state on it, then every change. The answer is shown as plain text (textContent), so no
// markup from the model can run here.
//
// When Chrome stops the worker, the port disconnects. If a stream was running, the panel connects
// again at once: that is an event for the worker, so Chrome starts it again, and the new worker
// takes the stream up from chrome.storage.session and sends the whole state on the new port. When
// nothing runs, it does not (an idle worker may stay stopped), and connects again when a worker
// says that something changed.

const PANEL_PORT = "axrisi-panel";
const $ = (id) => document.getElementById(id);

let job = null;
let port = null;
/** Connections in a row that ended before the worker answered (backs the retries off). */
let failures = 0;

const isRunning = (state) => state?.status === "connecting" || state?.status === "streaming";

function show(state) {
  if (!state) return;
  job = state;
  $("title").textContent = state.title || "Axrisi";
  $("state").textContent = state.status;
  document.body.dataset.state = state.status;
  $("answer").textContent = state.content;
  const running = isRunning(state);
  $("answer").setAttribute("aria-busy", running ? "true" : "false");
  $("stop").disabled = !running;
  $("error").hidden = !state.error;
  $("error").textContent = state.error || "";
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

chrome.runtime.onMessage.addListener((message, sender) => {
  if (sender.id === chrome.runtime.id && message?.type === "axrisi:changed") connect();
});
$("stop").addEventListener("click", () => {
  chrome.runtime.sendMessage({ type: "axrisi:stop" }).catch(() => {});
});
connect();

// The options page: where the server is and which token to send it.
const $ = (id) => document.getElementById(id);
const DEFAULTS = { serverUrl: "http://127.0.0.1:8000", token: "" };
const origin = `chrome-extension://${chrome.runtime.id}`;
$("origin").textContent = origin;
$("origin2").textContent = origin;

chrome.storage.local.get(DEFAULTS).then(({ serverUrl, token }) => {
  $("serverUrl").value = serverUrl;
  $("token").value = token;
});

$("options").addEventListener("submit", async (event) => {
  event.preventDefault();
  let serverUrl;
  try {
    serverUrl = new URL($("serverUrl").value.trim()).origin;
  } catch {
    $("status").textContent = "The server URL is not a URL.";
    return;
  }
  // Ask for access to that server (a user gesture is needed, and this is one). Without it, the
  // server must allow this extension's origin in CORS_ORIGINS.
  let granted = false;
  try {
    granted = await chrome.permissions.request({ origins: [`${serverUrl}/*`] });
  } catch {
    granted = false;
  }
  await chrome.storage.local.set({ serverUrl, token: $("token").value.trim() });
  $("status").textContent = granted
    ? "Saved."
    : `Saved. Without host access the server needs CORS_ORIGINS=${origin}.`;
});

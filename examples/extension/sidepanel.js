// The side panel: a view of the service worker's job. It asks for the state when it opens and
// then receives every change as a runtime message (no port to hold open, so Chrome may stop the
// worker between streams). The answer is shown as plain text (textContent), so no markup from
// the model can run here.

const $ = (id) => document.getElementById(id);

function show(job) {
  if (!job) return;
  $("title").textContent = job.title || "Axrisi";
  $("state").textContent = job.status;
  document.body.dataset.state = job.status;
  $("answer").textContent = job.content;
  const running = job.status === "connecting" || job.status === "streaming";
  $("answer").setAttribute("aria-busy", running ? "true" : "false");
  $("stop").disabled = !running;
  $("error").hidden = !job.error;
  $("error").textContent = job.error || "";
}

chrome.runtime.onMessage.addListener((message, sender) => {
  if (sender.id === chrome.runtime.id && message?.type === "axrisi:job") show(message.job);
});
$("stop").addEventListener("click", () => {
  chrome.runtime.sendMessage({ type: "axrisi:stop" }).catch(() => {});
});
chrome.runtime.sendMessage({ type: "axrisi:get" }).then(show).catch(() => {});

// tracker status page: live updates over server-sent events and the Retry button.
// The server renders (and escapes) every fragment; this script only swaps them in.
"use strict";
(function () {
  const body = document.body;
  const status = document.getElementById("live-status");
  let updates = 0;
  // The words come from the page (the server translated them): data-text-* on #live-status.
  const words = status ? status.dataset : {};
  const say = (key, fallback) => words["text" + key] || fallback;

  function show(state, text) {
    if (status) {
      status.dataset.state = state;
      status.textContent = text;
    }
  }

  function apply(parts) {
    for (const [name, html] of Object.entries(parts)) {
      const target = document.querySelector('[data-part="' + CSS.escape(name) + '"]');
      if (!target) continue;
      // Keep the <details> a reader opened across the swap.
      const open = new Set(Array.from(target.querySelectorAll("details[open][data-key]"),
                                      (d) => d.dataset.key));
      target.innerHTML = html;
      for (const d of target.querySelectorAll("details[data-key]")) {
        if (open.has(d.dataset.key)) d.open = true;
      }
    }
    updates += 1;
    body.dataset.updates = String(updates);
  }

  const url = body.dataset.liveUrl;
  if (url && "EventSource" in window) {
    show("connecting", say("Connecting", "connecting…"));
    const source = new EventSource(url);
    source.addEventListener("open", () => show("live", say("Live", "live")));
    source.addEventListener("update", (event) => {
      apply(JSON.parse(event.data));
      show("live", say("Live", "live"));
    });
    source.addEventListener("problem", (event) => show("down", JSON.parse(event.data).message));
    source.addEventListener("denied", () => {
      source.close();
      window.location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    });
    source.addEventListener("error", () => {
      show("down", source.readyState === EventSource.CLOSED ? say("Disconnected", "disconnected")
                                                            : say("Reconnecting", "reconnecting…"));
    });
  }

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-retry]");
    if (!button) return;
    button.disabled = true;
    button.textContent = say("Retrying", "Retrying…");
    try {
      const response = await fetch("/outbox/" + encodeURIComponent(button.dataset.retry) + "/retry?lang=" + encodeURIComponent(body.dataset.lang || "en"), {
        method: "POST",
        credentials: "same-origin",
        headers: {"X-Requested-By": "tracker"},
      });
      const answer = await response.json();
      button.textContent = response.ok ? say("Queued", "Queued") : (answer.message || say("Failed", "Failed"));
      button.dataset.outcome = response.ok ? "queued" : "failed";
    } catch (error) {
      button.textContent = say("Failed", "Failed") + ": " + error;
      button.disabled = false;
    }
  });
})();

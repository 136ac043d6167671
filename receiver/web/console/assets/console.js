"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  function summary(e) {
    const m = e.message || {};
    if (e.event_type === "RTMP_STREAM_STATE_CHANGE") return m.state || "";
    if (e.event_type === "SHOOT_SCRIPT_SWITCH") {
      return [m.shoot_script_sequence_no, m.shoot_script_title || m.scene_script_name]
        .filter((v) => v !== undefined && v !== null).join(" ");
    }
    if (e.event_type === "REPLY_COMMAND_FINISH") return "reply " + (m.reply_id || "");
    return "";
  }

  document.querySelectorAll("form.ack").forEach((form) => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = { action: data.get("action"), reason: data.get("reason") };
      if (data.get("by")) body.by = data.get("by");
      const status = form.querySelector(".ack-status");
      status.textContent = "…";
      // getAttribute: the form has a field named "action", which form.action would return.
      const answer = await fetch(form.getAttribute("action"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf },
        body: JSON.stringify(body),
      });
      if (answer.ok) {
        location.reload();
        return;
      }
      const error = await answer.json().catch(() => ({}));
      status.textContent = error.error_msg || "refused (" + answer.status + ")";
    });
  });

  // The destination page's buttons: a POST to the query API with the session's CSRF token.
  document.querySelectorAll("button.api-post").forEach((button) => {
    button.addEventListener("click", async () => {
      const status = document.querySelector(".api-status");
      status.textContent = "…";
      const answer = await fetch(button.dataset.url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrf },
        body: button.dataset.body || "{}",
      });
      if (answer.ok) {
        location.reload();
        return;
      }
      const error = await answer.json().catch(() => ({}));
      status.textContent = error.error_msg || "refused (" + answer.status + ")";
    });
  });

  const live = document.getElementById("live");
  if (live && window.EventSource) {
    const rows = document.getElementById("timeline-body");
    const counter = document.getElementById("live-count");
    let added = 0;
    const source = new EventSource(live.dataset.stream);
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live"; };
    source.onmessage = (message) => {
      const e = JSON.parse(message.data);
      if (document.getElementById("event-" + e.id)) return;
      const row = document.createElement("tr");
      row.id = "event-" + e.id;
      row.className = "new";
      [e.id, e.received_at, e.event_type, summary(e)].forEach((value) => {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.appendChild(cell);
      });
      rows.appendChild(row);
      added += 1;
      counter.textContent = added + " new";
    };
  }
})();

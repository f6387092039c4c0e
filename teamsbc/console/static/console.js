// teamsbc console: the live call list (server-sent events) and small conveniences.
// No framework, no inline script (the Content-Security-Policy allows only this file), and
// every value from the SBC goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  function el(name, text, cls) {
    const e = document.createElement(name);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function utc(iso) {
    return iso ? String(iso).slice(0, 19).replace("T", " ") : "";
  }

  // ------------------------------------------------------------------ live calls
  function liveCalls() {
    const table = document.getElementById("live-calls");
    if (!table || !window.EventSource) return;
    const count = document.getElementById("live-count");
    const status = document.getElementById("live-status");
    let offset = 0;           // server clock - our clock (s)
    let rows = [];
    const shownAt = {};       // call-id -> when its row first appeared (s, our clock)

    function duration(c) {
      if (c.answered_at === null || c.answered_at === undefined) return "";
      const s = Math.max(0, Date.now() / 1000 + offset - c.answered_at);
      return Math.floor(s) + " s";
    }

    function render() {
      const fresh = document.createElement("tbody");
      if (rows.length === 0) {
        const tr = el("tr");
        const td = el("td", "no calls in progress", "empty");
        td.colSpan = 7;
        tr.appendChild(td);
        fresh.appendChild(tr);
      }
      for (const c of rows) {
        const tr = el("tr");
        tr.dataset.callId = c.call_id;
        if (!(c.call_id in shownAt)) shownAt[c.call_id] = Date.now() / 1000;
        tr.dataset.shownAt = String(shownAt[c.call_id]);
        if (c.started_at !== null && c.started_at !== undefined) tr.dataset.startedAt = String(c.started_at);
        tr.appendChild(el("td", c.direction));
        tr.appendChild(el("td", c.display ? "\"" + c.display + "\" " + (c.caller || "") : (c.caller || "")));
        tr.appendChild(el("td", c.callee));
        const st = el("td");
        st.appendChild(el("span", c.state, "badge st-" + (c.state === "answered" ? "up" : "setup")));
        tr.appendChild(st);
        tr.appendChild(el("td", utc(c.started)));
        tr.appendChild(el("td", duration(c), "duration"));
        const link = el("td");
        const a = el("a", "detail");
        a.href = "/console/call?id=" + encodeURIComponent(c.call_id);
        link.appendChild(a);
        tr.appendChild(link);
        fresh.appendChild(tr);
      }
      table.replaceChild(fresh, table.tBodies[0]);
    }

    const source = new EventSource("/console/events");
    source.addEventListener("calls", function (ev) {
      const data = JSON.parse(ev.data);
      offset = data.now - Date.now() / 1000;
      rows = data.calls;
      if (count) count.textContent = String(data.count);
      render();
      if (status) status.textContent = "Live: updated " + new Date().toISOString().slice(11, 19) + " UTC.";
      table.dataset.version = String((Number(table.dataset.version) || 0) + 1);
    });
    source.addEventListener("error", function () {
      if (status) status.textContent = "Live updates interrupted: reconnecting…";
    });
    setInterval(function () {
      const cells = table.querySelectorAll("td.duration");
      rows.forEach(function (c, i) { if (cells[i]) cells[i].textContent = duration(c); });
    }, 1000);
  }

  // ------------------------------------------------------------------ ladder: mark the arrow shown
  function ladder() {
    function mark() {
      document.querySelectorAll("a.selected").forEach(function (a) { a.classList.remove("selected"); });
      const m = /^#msg-(\d+)$/.exec(location.hash);
      if (m) {
        const a = document.getElementById("arrow-" + m[1]);
        if (a) a.classList.add("selected");
      }
    }
    window.addEventListener("hashchange", mark);
    mark();
  }

  // ------------------------------------------------------------------ confirmations
  function confirmations() {
    document.querySelectorAll("button[data-confirm]").forEach(function (b) {
      b.form.addEventListener("submit", function (ev) {
        if (!window.confirm(b.dataset.confirm)) ev.preventDefault();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    liveCalls();
    ladder();
    confirmations();
  });
})();

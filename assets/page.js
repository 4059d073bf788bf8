// mvc's page: keeps the run view current. Server-sent events first (/events); when they
// fail, polling /state.json. Everything from the run is written with textContent, never as
// HTML, so an error or a log line that holds markup shows as text.
"use strict";
(function () {
  var body = document.body;
  if (!body || body.getAttribute("data-page") !== "run") return;
  var STATES = ["cached", "ran", "running", "waiting", "failed"];
  var BAR = 210;
  var lastGroups = null;
  var lastPhase = null;
  var events = 0;
  var pollTimer = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function link(href, text) { var a = el("a", null, text); a.href = href; return a; }
  function digits(n) { return Number(n).toLocaleString("en-US"); }

  function countsText(s) {
    if (s.deferred) return "items not known yet";
    return digits(s.cached + s.ran + s.failed) + "/" + digits(s.total) + " done · " +
      digits(s.running) + " running · " + digits(s.failed) + " failed";
  }

  function updateStage(i, s) {
    var text = document.getElementById("s" + i + "-text");
    if (text) text.textContent = countsText(s);
    var parts = [s.cached, s.ran, s.running, s.waiting, s.failed];
    var total = parts.reduce(function (a, b) { return a + b; }, 0) || 1;
    var first = document.getElementById("s" + i + "-cached");
    var x = first ? Number(first.getAttribute("x")) : 0;
    STATES.forEach(function (st, k) {
      var r = document.getElementById("s" + i + "-" + st);
      if (!r) return;
      var w = Math.round(parts[k] / total * BAR);
      r.setAttribute("x", x); r.setAttribute("width", w); x += w;
    });
    var row = document.querySelector('#stages tr[data-stage="' + i + '"]');
    if (!row) return;
    var values = { total: s.total, cached: s.cached, ran: s.ran, running: s.running,
      waiting: s.waiting, failed: s.failed,
      rate: s.rate == null ? "" : s.rate.toFixed(1),
      eta: s.eta_s == null ? "" : Math.round(s.eta_s) + " s" };
    Object.keys(values).forEach(function (f) {
      var cell = row.querySelector('[data-field="' + f + '"]');
      if (cell) cell.textContent = values[f];
    });
  }

  function groupCard(g) {
    var card = el("div", "card failure");
    var head = el("div");
    head.appendChild(el("b", null, g.stage));
    head.appendChild(document.createTextNode(" · " + g.count + " item" + (g.count === 1 ? "" : "s")));
    if (g.earlier) head.appendChild(el("span", "muted", " (recorded by an earlier run; --retry-failed retries it)"));
    card.appendChild(head);
    card.appendChild(el("pre", "error", g.error));
    var list = el("ul");
    var firstLog = null;
    g.items.forEach(function (it) {
      var li = el("li");
      li.appendChild(it.key ? link("/task/" + it.key, it.item) : document.createTextNode(it.item));
      if (it.log) {
        li.appendChild(document.createTextNode(" · "));
        li.appendChild(link("/log/" + it.log, "whole log"));
        if (!firstLog) firstLog = it.log;
      }
      list.appendChild(li);
    });
    card.appendChild(list);
    if (firstLog) {
      var tail = el("pre", "logtail", "");
      card.appendChild(tail);
      fetch("/log/" + firstLog + "?tail=12", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : ""; })
        .then(function (t) { tail.textContent = t; })
        .catch(function () {});
    }
    return card;
  }

  function updateFailures(snap) {
    var total = document.getElementById("failures-total");
    if (total) total.textContent = "(" + snap.failures_total + ")";
    var key = JSON.stringify(snap.failure_groups);
    if (key === lastGroups) return;
    var box = document.getElementById("failure-groups");
    if (!box) return;
    if (lastGroups === null && box.getAttribute("data-rendered") !== "no") {
      // The first snapshot matches what the server drew: keep it (and its log tails). Only
      // failure cards count: the "None." the server draws before any failure is not a group
      // (counted, a first snapshot with one group was never drawn).
      lastGroups = key;
      if (box.querySelectorAll(".failure").length === snap.failure_groups.length) return;
    }
    lastGroups = key;
    while (box.firstChild) box.removeChild(box.firstChild);
    if (snap.failure_groups.length === 0) box.appendChild(el("p", "muted", "None."));
    snap.failure_groups.forEach(function (g) { box.appendChild(groupCard(g)); });
  }

  function updateNotes(snap) {
    var ul = document.getElementById("notes");
    if (!ul) return;
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    snap.notes.forEach(function (n) { ul.appendChild(el("li", null, n)); });
  }

  var PHASES = { idle: ["no run in progress", "ok"], running: ["running", "running"],
    ok: ["over: ok", "ok"], failed: ["over: failed", "failed"],
    interrupted: ["over: interrupted", "interrupted"] };

  function apply(snap) {
    var phase = document.getElementById("phase");
    var p = PHASES[snap.phase] || [snap.phase, "running"];
    if (phase) { phase.textContent = p[0]; phase.className = "status " + p[1]; }
    var elapsed = document.getElementById("elapsed");
    if (elapsed) elapsed.textContent = Math.round(snap.elapsed_s) + " s";
    snap.stages.forEach(function (s, i) { updateStage(i, s); });
    updateFailures(snap);
    updateNotes(snap);
    if (lastPhase === "running" && snap.phase !== "running") {
      var note = document.getElementById("live-note");
      if (note) note.textContent = "The run is over. `mvc ui` on its pipeline shows it from now on.";
    }
    lastPhase = snap.phase;
    body.setAttribute("data-version", snap.version);
  }

  function poll() {
    body.setAttribute("data-transport", "polling");
    fetch("/state.json", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (snap) { apply(snap); if (snap.phase === "running") pollTimer = setTimeout(poll, 2000); })
      .catch(function () { lostConnection(); });
  }

  function lostConnection() {
    var note = document.getElementById("live-note");
    if (note) note.textContent = lastPhase === "running"
      ? "Lost the connection to the run's mvc process (it may have ended)."
      : "The run's mvc process has ended; `mvc ui` on its pipeline shows this run.";
  }

  if (window.EventSource) {
    var source = new EventSource("/events");
    body.setAttribute("data-transport", "events");
    source.addEventListener("snapshot", function (e) {
      events += 1;
      body.setAttribute("data-events", events);
      apply(JSON.parse(e.data));
    });
    source.onerror = function () {
      source.close();
      if (lastPhase === "running" || lastPhase === null) { if (!pollTimer) poll(); }
      else lostConnection();
    };
  } else {
    poll();
  }
})();

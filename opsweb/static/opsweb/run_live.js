// The run page while a run is queued or running: append new events and update the status
// (the badge and the Status field) without reloading (what the reader opened stays open).
// Polls every 1.5 s; when the run ends it fills in the fields the end set (replaces, error,
// finished at), stops, says so, and turns the run's action buttons
// (cancel, approve…) into disabled ones that say why (reloading would close what the reader
// opened; the server refuses an action on an ended run anyway).
// A page opened while the run was pending waits: live.js redraws its regions until the run
// leaves "pending" (approved, rejected…), and from then on this script follows it, so that the
// Status field and the others do not keep saying "Pending approval" under a "Succeeded" badge.
(function () {
  "use strict";
  var events = document.getElementById("events");
  if (!events || !events.dataset.liveUrl) { return; }
  var url = events.dataset.liveUrl;
  var following = false;
  var sawActive = false; // the buttons on the page were drawn for a run still going
  // The regions live.js redraws are replaced, not changed: look each element up every time.
  function byId(id) { return document.getElementById(id); }
  function tbody() { return byId("events").querySelector("tbody"); }
  function retireActions() {
    document.querySelectorAll(".object-tools a.opsweb-action").forEach(function (link) {
      if (/\/history\/$/.test(link.getAttribute("href"))) { return; }
      var span = document.createElement("span");
      span.className = "opsweb-action opsweb-disabled";
      span.setAttribute("aria-disabled", "true");
      span.title = "This run has ended: reload the page for what can be done now.";
      span.textContent = link.textContent;
      link.replaceWith(span);
    });
  }
  function lastId() {
    var rows = tbody().querySelectorAll("tr[data-event]");
    return rows.length ? rows[rows.length - 1].dataset.event : "0";
  }
  function cell(text, label) {
    var td = document.createElement("td");
    td.textContent = text;
    if (label) { td.dataset.label = label; }
    return td;
  }
  function append(event) {
    var body = tbody();
    var empty = body.querySelector("tr.empty");
    if (empty) { empty.remove(); }
    var current = body.querySelector("tr.in-progress");
    if (current) { current.classList.remove("in-progress"); }
    var tr = document.createElement("tr");
    tr.dataset.event = event.id;
    tr.className = "event-" + event.level + " in-progress";
    tr.appendChild(cell(event.at));
    tr.appendChild(cell(event.level));
    var td = document.createElement("td");
    var pre = document.createElement("pre");
    pre.style.whiteSpace = "pre-wrap"; pre.style.margin = "0";
    pre.textContent = event.message;
    td.appendChild(pre); tr.appendChild(td);
    tr.appendChild(cell(event.took || "", "Took"));
    body.appendChild(tr);
  }
  function poll() {
    fetch(url + "?after=" + encodeURIComponent(lastId()), { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        (data.events || []).forEach(append);
        var counter = byId("event-count");
        if (counter) { counter.textContent = String(tbody().querySelectorAll("tr[data-event]").length); }
        var status = byId("run-status");
        if (status) {
          status.className = "run-status-" + data.status;
          var badge = status.querySelector(".opsweb-status");
          badge.className = "opsweb-status opsweb-status-" + data.status;
          badge.textContent = data.status_display;
        }
        var field = document.querySelector(".field-status .readonly");
        if (field) { field.textContent = data.status_display; }
        var step = byId("run-step");
        if (step) { step.textContent = data.active && data.step ? " — " + data.step : ""; }
        if (data.active) { sawActive = true; window.setTimeout(poll, 1500); return; }
        var current = tbody().querySelector("tr.in-progress");
        if (current) { current.classList.remove("in-progress"); }
        // The fields the end set (what it replaced, its error, when it finished): not "-".
        Object.keys(data.fields || {}).forEach(function (name) {
          var shown = document.querySelector(".field-" + name + " .readonly");
          if (shown) { shown.textContent = data.fields[name]; }
        });
        var ended = byId("run-ended");
        if (ended) { ended.hidden = false; }
        // What the last click said ("…; it is queued") was true then, not now that it ended.
        document.querySelectorAll("ul.messagelist").forEach(function (list) { list.remove(); });
        if (sawActive) { retireActions(); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  function follow() {
    var status = byId("run-status");
    if (following || (status && status.classList.contains("run-status-pending"))) { return; }
    following = true;
    sawActive = /run-status-(queued|running)/.test(status ? status.className : "");
    poll();
  }
  document.addEventListener("opsweb:live-updated", follow);
  if (!byId("run-status") || !byId("run-status").classList.contains("run-status-pending")) {
    following = sawActive = true;
    window.setTimeout(poll, 1500);
  }
})();

// The run page while a run is queued or running: append new events and update the status
// (the badge and the Status field) without reloading (what the reader opened stays open).
// Polls every 1.5 s; when the run ends it fills in the fields the end set (replaces, error,
// finished at), stops, says so, and turns the run's action buttons
// (cancel, approve…) into disabled ones that say why (reloading would close what the reader
// opened; the server refuses an action on an ended run anyway).
(function () {
  "use strict";
  var root = document.getElementById("events");
  if (!root || !root.dataset.liveUrl) { return; }
  var url = root.dataset.liveUrl;
  var tbody = root.querySelector("tbody");
  var status = document.getElementById("run-status");
  var step = document.getElementById("run-step");
  var counter = document.getElementById("event-count");
  var field = document.querySelector(".field-status .readonly");
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
    var rows = tbody.querySelectorAll("tr[data-event]");
    return rows.length ? rows[rows.length - 1].dataset.event : "0";
  }
  function cell(text) { var td = document.createElement("td"); td.textContent = text; return td; }
  function append(event) {
    var empty = tbody.querySelector("tr.empty");
    if (empty) { empty.remove(); }
    var current = tbody.querySelector("tr.in-progress");
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
    tr.appendChild(cell(event.took || ""));
    tbody.appendChild(tr);
  }
  function poll() {
    fetch(url + "?after=" + encodeURIComponent(lastId()), { credentials: "same-origin" })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        (data.events || []).forEach(append);
        if (counter) { counter.textContent = String(tbody.querySelectorAll("tr[data-event]").length); }
        if (status) {
          status.className = "run-status-" + data.status;
          var badge = status.querySelector(".opsweb-status");
          badge.className = "opsweb-status opsweb-status-" + data.status;
          badge.textContent = data.status_display;
        }
        if (field) { field.textContent = data.status_display; }
        if (step) { step.textContent = data.active && data.step ? " — " + data.step : ""; }
        if (data.active) { window.setTimeout(poll, 1500); return; }
        var current = tbody.querySelector("tr.in-progress");
        if (current) { current.classList.remove("in-progress"); }
        // The fields the end set (what it replaced, its error, when it finished): not "-".
        Object.keys(data.fields || {}).forEach(function (name) {
          var shown = document.querySelector(".field-" + name + " .readonly");
          if (shown) { shown.textContent = data.fields[name]; }
        });
        var ended = document.getElementById("run-ended");
        if (ended) { ended.hidden = false; }
        retireActions();
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1500);
})();

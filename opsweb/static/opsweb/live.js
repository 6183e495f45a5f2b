// Live pages: every element with data-live-region (and an id) is refreshed from the page's own
// URL every data-live-every seconds (default 5) while the tab is visible. The request carries
// X-Opsweb-Live and the ETag of what is shown: when nothing changed the server answers 304
// after one query and nothing is redrawn. Stops while the tab is hidden; asks at once when it
// is shown again. A region being typed into (a focused input) is left alone.
(function () {
  "use strict";
  var regions = document.querySelectorAll("[data-live-region][id]");
  if (!regions.length) { return; }
  var etag = regions[0].dataset.liveEtag || "";
  var every = 1000 * (parseFloat(regions[0].dataset.liveEvery) || 5);
  var timer = null;
  var busy = false;
  function schedule() {
    window.clearTimeout(timer);
    if (!regions.length) { return; }
    if (document.visibilityState !== "hidden") { timer = window.setTimeout(poll, every); }
  }
  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    regions.forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (!next || old.contains(document.activeElement)) { return; }
      old.replaceWith(next);
    });
    // A page that is no longer live (a run that left "pending") has no regions: stop asking.
    regions = document.querySelectorAll("[data-live-region][id]");
    document.dispatchEvent(new CustomEvent("opsweb:live-updated"));
  }
  function poll() {
    if (busy || !regions.length || document.visibilityState === "hidden") { return; }
    busy = true;
    var headers = { "X-Opsweb-Live": "1" };
    if (etag) { headers["If-None-Match"] = etag; }
    fetch(window.location.href, { credentials: "same-origin", headers: headers, cache: "no-store" })
      .then(function (response) {
        if (response.status === 304) { return null; }
        if (!response.ok || response.redirected) { throw new Error("status " + response.status); }
        etag = response.headers.get("ETag") || "";
        return response.text();
      })
      .then(function (html) { if (html !== null) { swap(html); } })
      .catch(function () { /* the next poll tries again */ })
      .then(function () { busy = false; schedule(); });
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") { window.clearTimeout(timer); } else { poll(); }
  });
  window.opswebLive = { poll: poll };
  schedule();
})();

// The dashboard's only script: live updates of the line page over server-sent events.
// The server renders every fragment; this swaps them in by id. No inline script, no
// framework, nothing fetched from elsewhere.
"use strict";
(function () {
  var root = document.querySelector("[data-live]");
  var status = document.getElementById("live-status");
  if (!root || !root.dataset.live || !window.EventSource) {
    return;
  }
  var initial = status ? status.textContent : "";
  var source = new EventSource(root.dataset.live);
  source.addEventListener("open", function () {
    if (status) {
      status.textContent = initial + " · live";
      status.classList.remove("stale");
    }
  });
  source.addEventListener("error", function () {
    if (status) {
      status.textContent = initial + " · reconnecting…";
      status.classList.add("stale");
    }
  });
  source.addEventListener("swap", function (event) {
    var update = JSON.parse(event.data);
    var element = document.getElementById(update.id);
    if (element) {
      element.outerHTML = update.html;
      return;
    }
    var parent = update.parent && document.getElementById(update.parent);
    if (!parent) {
      window.location.reload();
      return;
    }
    var empty = parent.querySelector("tr.none");
    if (empty) {
      empty.remove();
    }
    parent.insertAdjacentHTML("beforeend", update.html);
  });
  // The server could not keep up with this page (or a station appeared): start afresh.
  source.addEventListener("reload", function () {
    window.location.reload();
  });
})();

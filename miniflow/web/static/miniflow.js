// miniflow web UI: refresh a page while something on it runs; filter the DAG list as you type.
(function () {
  "use strict";
  var REFRESH_MS = 3000;

  function editing() {
    // never replace a form the user is filling in
    var el = document.activeElement;
    if (el && el.form && el.tagName !== "BUTTON") return true;
    return document.querySelector("form[data-dirty]") !== null;
  }

  function refresh() {
    if (document.body.dataset.live !== "1") return;
    if (editing() || document.hidden) { setTimeout(refresh, REFRESH_MS); return; }
    fetch(location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html && !editing()) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("main");
          if (fresh) {
            document.getElementById("main").innerHTML = fresh.innerHTML;
            document.body.dataset.live = doc.body.dataset.live;
            var badge = document.querySelector(".badge.live");
            if (badge && doc.body.dataset.live !== "1") badge.remove();
            wire();
          }
        }
        setTimeout(refresh, REFRESH_MS);
      })
      .catch(function () { setTimeout(refresh, REFRESH_MS * 2); });
  }

  function follow() {
    // a running try's log: appended line by line from server-sent events
    var pre = document.getElementById("log");
    if (!pre || !pre.dataset.follow || pre.dataset.following) return;
    pre.dataset.following = "1";
    var source = new EventSource(pre.dataset.follow);
    var append = function (text) {
      var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent += text + "\n";
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
    source.onmessage = function (e) { append(JSON.parse(e.data)); };
    source.addEventListener("failure", function (e) { append(JSON.parse(e.data)); });
    source.addEventListener("end", function () { source.close(); location.reload(); });
    source.onerror = function () {
      // a dropped stream would restart from the first line: reload the page instead
      source.close();
      setTimeout(function () { location.reload(); }, REFRESH_MS);
    };
  }

  function wire() {
    follow();
    var filter = document.getElementById("filter");
    if (filter && !filter.dataset.wired) {
      filter.dataset.wired = "1";
      filter.addEventListener("input", function () {
        var q = filter.value.toLowerCase();
        document.querySelectorAll("#dags tbody tr[data-search]").forEach(function (tr) {
          tr.style.display = tr.dataset.search.indexOf(q) >= 0 ? "" : "none";
        });
      });
    }
    document.querySelectorAll("form:not(.filter)").forEach(function (form) {
      form.addEventListener("input", function () { form.dataset.dirty = "1"; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    wire();
    setTimeout(refresh, REFRESH_MS);
  });
})();

// cordon report: the page's one script. Reads the data block (see data.rs) and draws the
// overview groups, the search results and the focus view of one service (#service=NAME).
// Every name from the ledger goes in through textContent, never as markup. Each step is linear
// in nodes and edges; lists are drawn a page at a time.
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("cordon-data").textContent);
  var F = {};
  D.fields.forEach(function (f, i) { F[f] = i; });
  var W = D.fields.length, E = D.edges, nEdges = E.length / W;
  var names = D.names, n = names.length;
  var byName = new Map();
  names.forEach(function (x, i) { byName.set(x, i); });
  var isAddr = new Uint8Array(n);
  D.addresses.forEach(function (i) { isAddr[i] = 1; });
  var svc = new Array(n).fill(null); // [name, mode, ready, cut off, summary] for destinations
  D.services.forEach(function (r) { svc[r[0]] = r; });
  var inE = [], outE = [];
  for (var i = 0; i < n; i++) { inE.push([]); outE.push([]); }
  var connIn = new Float64Array(n);
  for (var k = 0; k < nEdges; k++) {
    var o = k * W;
    outE[E[o + F.source]].push(k);
    inE[E[o + F.destination]].push(k);
    connIn[E[o + F.destination]] += E[o + F.connections];
  }
  // Distinct callers and callees per node (a caller may arrive both with and without a certificate).
  function distinct(lists, field) {
    var out = new Int32Array(n), stamp = new Int32Array(n).fill(-1);
    for (var v = 0; v < n; v++) {
      lists[v].forEach(function (k) {
        var p = E[k * W + field];
        if (stamp[p] !== v) { stamp[p] = v; out[v]++; }
      });
    }
    return out;
  }
  var nCallers = distinct(inE, F.source), nCallees = distinct(outE, F.destination);

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function href(v) { return "#service=" + encodeURIComponent(names[v]); }
  function link(v) { var a = el("a", "svc-link", names[v]); a.href = href(v); return a; }
  function minute(m) { return new Date((D.t0 + m) * 60000).toISOString().slice(0, 16) + "Z"; }
  function bytes(b) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b) + " " + u[i];
  }
  function modeOf(v) {
    if (svc[v]) return D.modes[svc[v][1]];
    return isAddr[v] ? "unknown address" : "caller";
  }
  function pill(text, cls) { return el("span", "pill " + (cls || text), text); }
  function cutOff(v) { return svc[v] ? svc[v][3] : 0; }

  // ---- overview: groups by readiness and by number of callers
  function readinessGroup(v) {
    if (isAddr[v]) return 5;
    var s = svc[v];
    if (!s) return 4;
    if (D.modes[s[1]] === "enforce") return s[2] ? 2 : 3;
    return s[2] ? 1 : 0;
  }
  var readinessNames = ["learning, not ready to enforce", "learning, ready to enforce", "enforcing",
    "enforcing, refusing recorded callers", "callers only (nothing recorded calls them)",
    "unknown addresses"];
  var callerBuckets = [[0, 0], [1, 1], [2, 5], [6, 20], [21, 100], [101, Infinity]];
  function callerGroup(v) {
    for (var b = 0; b < callerBuckets.length; b++) {
      if (nCallers[v] <= callerBuckets[b][1]) return b;
    }
    return callerBuckets.length - 1;
  }
  function bucketName(b) {
    var lo = callerBuckets[b][0], hi = callerBuckets[b][1];
    if (hi === 0) return "no recorded caller";
    if (lo === hi) return lo + " caller";
    if (hi === Infinity) return "more than " + (lo - 1) + " callers";
    return lo + " to " + hi + " callers";
  }
  function groups(container, labels, of, cls) {
    var members = labels.map(function () { return []; });
    for (var v = 0; v < n; v++) members[of(v)].push(v);
    var most = Math.max.apply(null, members.map(function (m) { return m.length; }).concat([1]));
    labels.forEach(function (label, g) {
      if (!members[g].length) return;
      var b = el("button", "group " + cls(g));
      b.type = "button";
      b.appendChild(el("span", "label", label));
      b.appendChild(el("span", "count", String(members[g].length)));
      var bar = el("span", "bar");
      bar.style.width = Math.max(2, 100 * members[g].length / most) + "%";
      b.appendChild(bar);
      b.addEventListener("click", function () { showGroup(label, members[g]); });
      container.appendChild(b);
    });
    return members;
  }
  function byConcern(a, b) {
    return cutOff(b) - cutOff(a) || nCallers[b] - nCallers[a] || connIn[b] - connIn[a] ||
      (names[a] < names[b] ? -1 : 1);
  }
  var PAGE = 100;
  function showGroup(label, members) {
    var box = document.getElementById("group-list");
    box.textContent = "";
    var sorted = members.slice().sort(byConcern);
    box.appendChild(el("h3", "", label + " (" + sorted.length + ")"));
    var t = el("table", "list");
    var head = el("tr");
    ["service", "mode", "callers", "calls", "connections in", "readiness"].forEach(function (h) {
      head.appendChild(el("th", "", h));
    });
    t.appendChild(el("thead")).appendChild(head);
    var body = t.appendChild(el("tbody"));
    box.appendChild(t);
    var more = el("button", "more");
    more.type = "button";
    var shown = 0;
    function page() {
      sorted.slice(shown, shown + PAGE).forEach(function (v) {
        var tr = el("tr", svc[v] && !svc[v][2] ? "not-ready" : "");
        tr.dataset.service = names[v];
        tr.appendChild(el("td", "svc")).appendChild(link(v));
        tr.appendChild(el("td")).appendChild(pill(modeOf(v), modeOf(v).replace(" ", "-")));
        tr.appendChild(el("td", "num", String(nCallers[v])));
        tr.appendChild(el("td", "num", String(nCallees[v])));
        tr.appendChild(el("td", "num", String(connIn[v])));
        tr.appendChild(el("td", "verdict", svc[v] ? svc[v][4] : ""));
        body.appendChild(tr);
      });
      shown = Math.min(sorted.length, shown + PAGE);
      more.textContent = "show " + Math.min(PAGE, sorted.length - shown) + " more of " + (sorted.length - shown);
      more.hidden = shown >= sorted.length;
    }
    more.addEventListener("click", page);
    box.appendChild(more);
    page();
  }
  var readinessMembers = groups(document.getElementById("by-readiness"), readinessNames, readinessGroup,
    function (g) { return ["not-ready", "ready", "enforce", "refusing", "caller", "address"][g]; });
  // Not ready, by reason: a service is in every group one of its reasons names.
  (function () {
    var labels = {
      "would-deny": "callers the policy would deny",
      "plaintext": "callers still in plaintext",
      "declared-never-seen": "declared callers never seen",
      "history-short": "history shorter than " + D.min_history_days + " days"
    };
    var members = D.reasons.map(function () { return []; });
    D.services.forEach(function (r) {
      D.reasons.forEach(function (_, i) { if (r[6] & (1 << i)) members[i].push(r[0]); });
    });
    var box = document.getElementById("by-reason");
    var most = Math.max.apply(null, members.map(function (m) { return m.length; }).concat([1]));
    D.reasons.forEach(function (reason, i) {
      if (!members[i].length) return;
      var b = el("button", "group not-ready");
      b.type = "button";
      b.appendChild(el("span", "label", labels[reason] || reason));
      b.appendChild(el("span", "count", String(members[i].length)));
      var bar = el("span", "bar");
      bar.style.width = Math.max(2, 100 * members[i].length / most) + "%";
      b.appendChild(bar);
      b.addEventListener("click", function () { showGroup("not ready: " + (labels[reason] || reason), members[i]); });
      box.appendChild(b);
    });
    if (!box.childNodes.length) box.appendChild(el("p", "none", "every service is ready"));
  })();
  groups(document.getElementById("by-callers"), callerBuckets.map(function (_, b) { return bucketName(b); }),
    callerGroup, function () { return "callers"; });
  var first = readinessMembers[0].length ? 0 : 1;
  showGroup(readinessNames[first], readinessMembers[first]);

  // ---- search
  var search = document.getElementById("search"), results = document.getElementById("search-results");
  var MATCHES = 15;
  function matches(q) {
    var pre = [], sub = [];
    for (var v = 0; v < n && pre.length < MATCHES; v++) {
      var x = names[v].toLowerCase(), at = x.indexOf(q);
      if (at === 0) pre.push(v);
      else if (at > 0 && sub.length < MATCHES) sub.push(v);
    }
    return pre.concat(sub).slice(0, MATCHES);
  }
  search.addEventListener("input", function () {
    results.textContent = "";
    var q = search.value.trim().toLowerCase();
    if (!q) return;
    var found = matches(q);
    if (!found.length) results.appendChild(el("li", "none", "no service or address matches"));
    found.forEach(function (v) {
      var li = el("li");
      li.appendChild(link(v));
      li.appendChild(pill(modeOf(v), modeOf(v).replace(" ", "-")));
      li.appendChild(el("span", "n", svc[v] ? svc[v][4] : nCallees[v] + " callee(s)"));
      results.appendChild(li);
    });
  });
  search.addEventListener("keydown", function (ev) {
    if (ev.key !== "Enter") return;
    var q = search.value.trim().toLowerCase();
    var exact = byName.get(search.value.trim());
    var v = exact !== undefined ? exact : matches(q)[0];
    if (v !== undefined) location.hash = href(v);
  });

  // ---- focus view of one service: its callers on the left, what it calls on the right
  var SVGNS = "http://www.w3.org/2000/svg";
  var SIDE = 20, ROW = 34, BOX_W = 190, BOX_H = 26, GAP = 230;
  function sv(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    return e;
  }
  // The edges of a node's one side, grouped by peer, most worrying and busiest first.
  function peers(list, field) {
    var at = new Map(), out = [];
    list.forEach(function (k) {
      var p = E[k * W + field];
      if (!at.has(p)) { at.set(p, out.length); out.push({ v: p, edges: [], bad: 0, conns: 0 }); }
      var g = out[at.get(p)];
      g.edges.push(k);
      if (D.classes[E[k * W + F.class]] !== "allowed") g.bad = 1;
      g.conns += E[k * W + F.connections];
    });
    out.sort(function (a, b) { return b.bad - a.bad || b.conns - a.conns || (names[a.v] < names[b.v] ? -1 : 1); });
    return out;
  }
  function diagram(v, callers, callees) {
    var left = callers.slice(0, SIDE), right = callees.slice(0, SIDE);
    var rows = Math.max(left.length, right.length, 1);
    var h = rows * ROW + 60, cx = 20 + BOX_W + GAP + BOX_W / 2, cy = h / 2 - 10;
    var w = 40 + 3 * BOX_W + 2 * GAP;
    var s = sv("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, "class": "focus-graph" });
    var defs = s.appendChild(sv("defs", {}));
    D.classes.forEach(function (c) {
      var m = defs.appendChild(sv("marker", { id: "focus-arrow-" + c, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerUnits: "userSpaceOnUse", markerWidth: 10, markerHeight: 10, orient: "auto" }));
      m.appendChild(sv("path", { d: "M0,0 L10,5 L0,10 z", "class": "head " + c }));
    });
    function box(p, x, y, cls) {
      var a = s.appendChild(sv("a", { href: href(p) }));
      var g = a.appendChild(sv("g", { "class": "node " + cls, "data-name": names[p] }));
      g.appendChild(sv("rect", { x: x - BOX_W / 2, y: y - BOX_H / 2, width: BOX_W, height: BOX_H, rx: 7 }));
      var t = g.appendChild(sv("text", { "class": "name", x: x, y: y + 5 }));
      t.textContent = names[p].length > 26 ? names[p].slice(0, 25) + "\u2026" : names[p];
      var title = g.appendChild(sv("title", {}));
      title.textContent = names[p] + " (" + modeOf(p) + ")";
    }
    function lines(group, x1, y1, x2, y2) {
      group.edges.forEach(function (k, j) {
        var o = k * W, c = D.classes[E[o + F.class]], off = (j - (group.edges.length - 1) / 2) * 5;
        var mx = (x1 + x2) / 2, g = s.insertBefore(sv("g", { "class": "edge " + c }), s.firstChild.nextSibling);
        g.appendChild(sv("path", { d: "M" + x1 + "," + (y1 + off) + " C" + mx + "," + (y1 + off) + " " + mx + "," +
          (y2 + off) + " " + x2 + "," + (y2 + off), "stroke-width": Math.min(7, 1.2 + 1.4 * Math.log10(E[o + F.connections] + 1)),
          "marker-end": "url(#focus-arrow-" + c + ")" }));
        var t = g.appendChild(sv("title", {}));
        t.textContent = names[E[o + F.source]] + " -> " + names[E[o + F.destination]] + ": " +
          E[o + F.connections] + " connections (" + D.idents[E[o + F.identified]] + "), " + c;
      });
    }
    function column(list, x, toCentre) {
      var top = cy - (list.length - 1) * ROW / 2;
      list.forEach(function (g, r) {
        var y = top + r * ROW;
        box(g.v, x, y, "peer " + modeOf(g.v).replace(" ", "-"));
        if (toCentre) lines(g, x + BOX_W / 2, y, cx - BOX_W / 2 - 2, cy);
        else lines(g, cx + BOX_W / 2, cy, x - BOX_W / 2 - 2, y);
      });
    }
    column(left, 20 + BOX_W / 2, true);
    column(right, cx + GAP + BOX_W, false);
    box(v, cx, cy, "centre " + modeOf(v).replace(" ", "-"));
    function more(list, shown, x) {
      if (list.length <= shown.length) return;
      var t = s.appendChild(sv("text", { "class": "more", x: x, y: h - 12 }));
      t.textContent = "and " + (list.length - shown.length) + " more, in the table below";
    }
    more(callers, left, 20 + BOX_W / 2);
    more(callees, right, cx + GAP + BOX_W);
    if (!callers.length) s.appendChild(sv("text", { "class": "more", x: 20 + BOX_W / 2, y: cy })).textContent = "no recorded caller";
    if (!callees.length) s.appendChild(sv("text", { "class": "more", x: cx + GAP + BOX_W, y: cy })).textContent = "calls nothing recorded";
    return s;
  }
  var ROWS = 500;
  function evidence(title, groupsOf, peerField) {
    var box = el("div", "evidence");
    var count = 0;
    groupsOf.forEach(function (g) { count += g.edges.length; });
    box.appendChild(el("h3", "", title + " (" + groupsOf.length + ")"));
    if (!groupsOf.length) { box.appendChild(el("p", "none", "none recorded")); return box; }
    var t = el("table", "list");
    var head = el("tr");
    ["service", "verdict", "identified", "connections", "bytes", "first seen", "last seen", "days", ""].forEach(function (x) {
      head.appendChild(el("th", "", x));
    });
    t.appendChild(el("thead")).appendChild(head);
    var body = t.appendChild(el("tbody"));
    var rows = 0;
    groupsOf.forEach(function (g) {
      g.edges.forEach(function (k) {
        if (rows++ >= ROWS) return;
        var o = k * W, c = D.classes[E[o + F.class]];
        var tr = el("tr", "edge-row " + c);
        tr.dataset.source = names[E[o + F.source]];
        tr.dataset.destination = names[E[o + F.destination]];
        tr.appendChild(el("td", "svc")).appendChild(link(E[o + peerField]));
        tr.appendChild(el("td")).appendChild(pill(c));
        tr.appendChild(el("td", "", D.idents[E[o + F.identified]]));
        tr.appendChild(el("td", "num", String(E[o + F.connections])));
        tr.appendChild(el("td", "num", bytes(E[o + F.bytes])));
        tr.appendChild(el("td", "", minute(E[o + F.first])));
        tr.appendChild(el("td", "", minute(E[o + F.last])));
        tr.appendChild(el("td", "num", String(E[o + F.days])));
        tr.appendChild(el("td", "flag", E[o + F.rare] ? "rare: a periodic job?" : ""));
        body.appendChild(tr);
      });
    });
    box.appendChild(t);
    if (count > ROWS) box.appendChild(el("p", "n", "the first " + ROWS + " of " + count + " edges; `cordon diff --service` lists all"));
    return box;
  }
  var focus = document.getElementById("focus");
  function showFocus(ev) {
    var h = location.hash, key = "#service=";
    if (h.indexOf(key) !== 0) { focus.hidden = true; return; }
    var name;
    try { name = decodeURIComponent(h.slice(key.length)); } catch (e) { name = h.slice(key.length); }
    var v = byName.get(name), head = document.getElementById("focus-head"), body = document.getElementById("focus-body");
    head.textContent = "";
    body.textContent = "";
    focus.hidden = false;
    var back = el("a", "back", "\u2190 overview");
    back.href = "#overview";
    head.appendChild(back);
    if (v === undefined) {
      head.appendChild(el("h2", "", "No service or address named \u201c" + name + "\u201d in this ledger"));
      return;
    }
    var h2 = head.appendChild(el("h2", "focus-title"));
    h2.appendChild(el("span", "", names[v] + " "));
    h2.appendChild(pill(modeOf(v), modeOf(v).replace(" ", "-")));
    focus.dataset.service = names[v];
    var verdict = svc[v] ? svc[v][4] : isAddr[v] ? "an address discovery does not know: it cannot be given an intention"
      : "a caller only: nothing recorded calls it";
    head.appendChild(el("p", svc[v] && !svc[v][2] ? "verdict not-ready" : "verdict ready", verdict));
    if (svc[v]) {
      head.appendChild(el("p", "n history", "history: the evidence spans " + svc[v][5] + " days (readiness asks for " +
        D.min_history_days + ")"));
    }
    var callers = peers(inE[v], F.source), callees = peers(outE[v], F.destination);
    head.appendChild(el("p", "n", callers.length + " caller(s), " + connIn[v] + " connections in; calls " +
      callees.length + " service(s)"));
    var g = el("div", "graph");
    g.appendChild(diagram(v, callers, callees));
    body.appendChild(g);
    body.appendChild(evidence("Callers of " + names[v], callers, F.source));
    body.appendChild(evidence("What " + names[v] + " calls (verdicts are the callee's)", callees, F.destination));
    // Opened with a #service= link the view is already at the top; clicked from below, go to it.
    if (ev) focus.scrollIntoView();
  }
  window.addEventListener("hashchange", showFocus);
  showFocus();
  document.body.dataset.renderedMs = String(Math.round(performance.now()));
})();

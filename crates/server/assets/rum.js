/* Steadfast browser agent. Served by Steadfast at /rum.js; no third party involved.
 *
 * <script src="https://steadfast.example/rum.js" data-key="sfpk_..." data-site="shop"
 *         data-user="USER_ID" async></script>
 *
 * Reports the page view (navigation timing, LCP, CLS, INP), fetch and XHR calls, resource
 * timing and JavaScript errors, with a session id (sessionStorage) and the user id
 * (data-user, or steadfast.setUser(id)). Same-origin fetch and XHR calls (and origins
 * listed in data-trace-origins, space-separated) carry a W3C traceparent under the page's
 * trace, so the backend's spans join it; steadfast.setVip(true) adds tracestate sf=vip so
 * the trace is never sampled away. Beacons go to data-endpoint (default: this script's
 * origin) /v1/rum with the publishable key, batched, and on page hide.
 */
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || window.steadfast) return;
  var key = me.getAttribute("data-key") || "";
  var site = me.getAttribute("data-site") || location.host;
  var endpoint = (me.getAttribute("data-endpoint") || new URL(me.src).origin) + "/v1/rum";
  var traceOrigins = (me.getAttribute("data-trace-origins") || "").split(/\s+/).filter(Boolean);
  var user = me.getAttribute("data-user") || null;
  var vip = false;
  function hex(n) {
    var a = new Uint8Array(n);
    crypto.getRandomValues(a);
    return Array.prototype.map.call(a, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }
  var sid;
  try {
    sid = sessionStorage.getItem("steadfast.sid");
    if (!sid) { sid = hex(16); sessionStorage.setItem("steadfast.sid", sid); }
  } catch (e) { sid = hex(16); }
  var trace = hex(16), pageSpan = hex(8);
  var queue = [], MAX = 100;
  var origFetch = window.fetch;
  function now() { return performance.timeOrigin + performance.now(); }
  function push(e) {
    // Every event says which page view it belongs to, whichever beacon carries it.
    e.trace_id = e.trace_id || trace;
    if (e.type !== "page_load") e.parent_span_id = pageSpan;
    if (queue.length < 500) queue.push(e);
    if (queue.length >= MAX) flush();
  }
  function flush() {
    if (!queue.length) return;
    var body = JSON.stringify({ site: site, session_id: sid, user_id: user, page: location.href, vip: vip, events: queue.splice(0) });
    try {
      origFetch.call(window, endpoint, { method: "POST", keepalive: true, body: body,
        headers: { "authorization": "Bearer " + key, "content-type": "application/json" } }).catch(function () {});
    } catch (e) { /* the page must never break because of the agent */ }
  }
  function traced(url) {
    try {
      var o = new URL(url, location.href).origin;
      return o === location.origin || traceOrigins.indexOf(o) >= 0;
    } catch (e) { return false; }
  }
  function headersFor(span) {
    var h = { traceparent: "00-" + trace + "-" + span + "-01" };
    if (vip) h.tracestate = "sf=vip";
    return h;
  }
  window.fetch = function (input, init) {
    var url = typeof input === "string" ? input : (input && input.url) || String(input);
    init = init || {};
    var span = hex(8), start = now();
    var method = (init.method || (input && input.method) || "GET").toUpperCase();
    if (traced(url)) {
      var h = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      var add = headersFor(span);
      for (var k in add) h.set(k, add[k]);
      init = Object.assign({}, init, { headers: h });
    }
    return origFetch.call(this, input, init).then(function (r) {
      push({ type: "fetch", url: url, method: method, status: r.status, start_ms: start, duration_ms: now() - start, span_id: span });
      return r;
    }, function (err) {
      push({ type: "fetch", url: url, method: method, status: 0, error: String(err), start_ms: start, duration_ms: now() - start, span_id: span });
      throw err;
    });
  };
  var open = XMLHttpRequest.prototype.open, send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this.__sf = { method: String(method).toUpperCase(), url: String(url), span: hex(8) };
    return open.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    var x = this, m = x.__sf;
    if (m) {
      if (traced(m.url)) { var add = headersFor(m.span); for (var k in add) x.setRequestHeader(k, add[k]); }
      m.start = now();
      x.addEventListener("loadend", function () {
        push({ type: "fetch", url: m.url, method: m.method, status: x.status, start_ms: m.start, duration_ms: now() - m.start, span_id: m.span });
      });
    }
    return send.apply(this, arguments);
  };
  window.addEventListener("error", function (e) {
    push({ type: "error", message: e.message, source: e.filename, line: e.lineno, col: e.colno, stack: e.error && e.error.stack, at_ms: now() });
  });
  window.addEventListener("unhandledrejection", function (e) {
    push({ type: "error", message: "unhandled rejection: " + String(e.reason), at_ms: now() });
  });
  var lcp = null, cls = 0, inp = null;
  function observe(type, f, opts) {
    try { new PerformanceObserver(function (l) { l.getEntries().forEach(f); }).observe(Object.assign({ type: type, buffered: true }, opts || {})); } catch (e) {}
  }
  observe("largest-contentful-paint", function (e) { lcp = e.startTime; });
  observe("layout-shift", function (e) { if (!e.hadRecentInput) cls += e.value; });
  observe("event", function (e) { if (e.interactionId && (inp === null || e.duration > inp)) inp = e.duration; }, { durationThreshold: 16 });
  function pageLoad() {
    var n = performance.getEntriesByType("navigation")[0] || {};
    push({ type: "page_load", trace_id: trace, span_id: pageSpan, start_ms: performance.timeOrigin,
      ttfb_ms: n.responseStart, dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd || now() - performance.timeOrigin,
      lcp_ms: lcp, cls: cls });
    performance.getEntriesByType("resource").slice(0, 100).forEach(function (r) {
      if (r.name.indexOf(endpoint) === 0) return;
      push({ type: "resource", name: r.name, initiator: r.initiatorType, start_ms: performance.timeOrigin + r.startTime, duration_ms: r.duration, span_id: hex(8) });
    });
    flush();
  }
  if (document.readyState === "complete") setTimeout(pageLoad, 0);
  else window.addEventListener("load", function () { setTimeout(pageLoad, 0); });
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") {
      if (lcp !== null) push({ type: "vital", name: "LCP", value: lcp, at_ms: now() });
      if (inp !== null) push({ type: "vital", name: "INP", value: inp, at_ms: now() });
      push({ type: "vital", name: "CLS", value: cls, at_ms: now() });
      flush();
    }
  });
  setInterval(flush, 5000);
  window.steadfast = {
    setUser: function (id) { user = id ? String(id) : null; },
    setVip: function (on) { vip = !!on; },
    flush: flush,
    traceId: function () { return trace; }
  };
})();

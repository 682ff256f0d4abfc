// The hub's dashboard: plain JavaScript, no build step. Everything live comes over the operator
// WebSocket (/v1/operator): the hub pushes events, the page asks for the one page or workflow it
// shows. Data only ever reaches the DOM as text (textContent), never as HTML.
"use strict";

const PHASES = ["pending", "pre-flight", "planning", "execution", "pausing", "paused",
  "resuming", "cancelling", "completing", "completed", "cancelled", "failed"];
const PENDING_LABEL = { pause: "pausing…", resume: "resuming…", cancel: "cancelling…" };
const PAGE = 50;

const $ = (id) => document.getElementById(id);
const app = {
  session: null, ws: null, online: false, nextId: 1, calls: new Map(), retry: 0,
  view: "", detailId: "", list: null, detail: null, overview: null, focused: null,
  filters: { q: "", service: "", phase: "", offset: 0 },
  pending: new Map(), // workflow id -> {op, phase}: a command sent, not yet confirmed
  timers: {},
  metricsBusy: false, // a "metrics" request in flight or the next one scheduled
};

// ---------------------------------------------------------------- small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the page's CSP
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function clock(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

function span(seconds) {
  if (!(seconds >= 0)) return "";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m} min ${s} s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h} h ${m % 60} min` : `${Math.floor(h / 24)} d ${h % 24} h`;
}

function ago(epoch) {
  return epoch ? `${span(Math.max(0, Date.now() / 1000 - epoch))} ago` : "";
}

const terminal = (phase) => phase === "completed" || phase === "cancelled" || phase === "failed";

function duration(w) {
  if (!w.created_at) return "";
  const end = terminal(w.phase) ? w.updated_at : Date.now() / 1000;
  return span(Math.max(0, end - w.created_at));
}

function bar(percent, label) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  const text = `${Math.round(value * 10) / 10}%`;
  return el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": String(value), "aria-label": label || "progress" },
    el("div", { class: "fill", style: `width:${value}%` }), el("span", { text }));
}

function phaseBadge(phase) {
  return el("span", { class: `phase ph-${phase}`, text: phase });
}

function throttle(name, ms, fn) {
  if (app.timers[name]) return;
  app.timers[name] = setTimeout(() => { app.timers[name] = null; fn(); }, ms);
}

const canSteer = () => app.session && app.session.access === "steer";

// ---------------------------------------------------------------- session and login

async function fetchSession(method, headers) {
  const response = await fetch("/v1/session", {
    method: method || "GET", headers: headers || {}, credentials: "same-origin", cache: "no-store",
  });
  if (!response.ok) throw new Error(response.status === 401 ? "wrong token" : `HTTP ${response.status}`);
  return response.json();
}

async function boot() {
  try {
    app.session = await fetchSession();
  } catch (err) {
    setOnline(false);
    setTimeout(boot, 1000);
    return;
  }
  if (app.session.auth_required && !app.session.access) {
    showLogin();
    return;
  }
  $("login").hidden = true;
  $("nav").hidden = false;
  $("who").textContent = app.session.auth_required
    ? (app.session.access === "steer" ? "operator" : "read only") : "";
  $("logout").hidden = !app.session.auth_required;
  connect();
  route();
}

function showLogin() {
  closeSocket();
  app.list = app.detail = app.overview = null;
  app.view = "";
  for (const id of ["view-list", "view-detail", "view-services", "view-hub"]) $(id).hidden = true;
  for (const body of document.querySelectorAll("tbody")) body.replaceChildren();
  $("hub-updated").textContent = "";
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  setConn("signed out", "off");
  $("token").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value;
  $("login-error").textContent = "";
  try {
    await fetchSession("POST", { Authorization: `Bearer ${token}` });
    $("token").value = "";
    boot();
  } catch (err) {
    $("login-error").textContent = `Sign-in failed: ${err.message}.`;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await fetchSession("DELETE", { "X-CSRF-Token": app.session ? app.session.csrf : "" });
  } finally {
    app.session = null;
    showLogin();
  }
});

// ---------------------------------------------------------------- the operator WebSocket

function setConn(text, cls) {
  const node = $("conn");
  node.textContent = text;
  node.className = `conn ${cls}`;
}

function setOnline(online) {
  app.online = online;
  document.body.classList.toggle("offline", !online);
  setConn(online ? "live" : "hub offline, reconnecting…", online ? "on" : "off");
}

function closeSocket() {
  if (app.ws) {
    app.ws.onclose = null;
    app.ws.close();
    app.ws = null;
  }
  // A closed socket answers nothing: end its calls now rather than at their timeout.
  for (const { reject, timer } of app.calls.values()) { clearTimeout(timer); reject(new Error("signed out")); }
  app.calls.clear();
}

function connect() {
  closeSocket();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/operator`);
  app.ws = ws;
  ws.onopen = async () => {
    app.retry = 0;
    app.focused = null;
    setOnline(true);
    try {
      // Records and events only for what the page shows; the rest arrive as a "changed" count.
      // Half a second between pushes, each one frame: smooth enough for a person, cheap for the hub.
      await call("subscribe", { workflows: false, workflow_ids: [], batch: true, interval: 0.5 });
    } catch (err) {
      return;
    }
    refreshView();
  };
  ws.onmessage = (message) => {
    let data;
    try { data = JSON.parse(message.data); } catch (err) { return; }
    if (data.event === "batch") data.events.forEach(onEvent);
    else if (data.event) onEvent(data);
    else if (app.calls.has(data.id)) {
      const { resolve, reject, timer } = app.calls.get(data.id);
      app.calls.delete(data.id);
      clearTimeout(timer);
      if (data.ok) resolve(data.result); else reject(new Error(data.error || data.code));
    }
  };
  ws.onclose = () => {
    app.ws = null;
    setOnline(false);
    for (const { reject, timer } of app.calls.values()) { clearTimeout(timer); reject(new Error("the hub went away")); }
    app.calls.clear();
    const delay = Math.min(5000, 250 * 2 ** app.retry++);
    setTimeout(recheck, delay);
  };
}

async function recheck() {
  // The hub may have restarted (sessions are in its memory): ask before dialing again.
  try {
    app.session = await fetchSession();
  } catch (err) {
    setTimeout(recheck, Math.min(5000, 250 * 2 ** app.retry++));
    return;
  }
  if (app.session.auth_required && !app.session.access) showLogin();
  else connect();
}

function call(op, params) {
  return new Promise((resolve, reject) => {
    if (!app.ws || app.ws.readyState !== WebSocket.OPEN) {
      reject(new Error("the hub is offline"));
      return;
    }
    const id = app.nextId++;
    const timer = setTimeout(() => { app.calls.delete(id); reject(new Error("no answer")); }, 15000);
    app.calls.set(id, { resolve, reject, timer });
    app.ws.send(JSON.stringify({ id, op, ...params }));
  });
}

function onEvent(event) {
  switch (event.event) {
    case "workflow": onWorkflow(event.workflow); break;
    case "phase_changed":
    case "checkpoint":
    case "error":
      if (event.workflow_id === app.detailId) throttle("detail", 300, loadDetail);
      break;
    case "removed": throttle("list", 500, loadList); break;
    case "changed":
      if (app.view === "list") throttle("list", 1000, loadList);
      else if (app.view === "services") throttle("overview", 1000, loadOverview);
      break;
    case "service": case "anomaly": case "snapshot":
      throttle("overview", 500, loadOverview);
      break;
    default: break;
  }
}

// A command is pending until the service confirms it with a phase change (for a bulk cancel,
// whose starting phases the page does not know: until the workflow is cancelling or finished).
function settle(w) {
  const pending = app.pending.get(w.workflow_id);
  if (!pending) return null;
  const done = pending.phase ? w.phase !== pending.phase : w.phase === "cancelling" || terminal(w.phase);
  if (done) app.pending.delete(w.workflow_id);
  return done ? null : pending;
}

function onWorkflow(w) {
  settle(w);
  if (app.view === "list") {
    const row = document.querySelector(`tr[data-id="${CSS.escape(w.workflow_id)}"]`);
    if (row) updateRow(row, workflowRow(w));
    throttle("list", 1000, loadList); // order, counts and new workflows
  } else if (app.view === "detail" && app.detail) {
    const ids = new Set([app.detailId, ...app.detail.tree.map((c) => c.workflow_id)]);
    if (ids.has(w.workflow_id)) throttle("detail", 300, loadDetail);
  } else if (app.view === "services") {
    throttle("overview", 1000, loadOverview);
  }
}

// ---------------------------------------------------------------- routing

function route() {
  if (!app.session || (app.session.auth_required && !app.session.access)) return;
  const hash = location.hash || "#/";
  const match = hash.match(/^#\/w\/(.+)$/);
  const named = { "#/services": "services", "#/hub": "hub" };
  app.view = match ? "detail" : named[hash] || "list";
  app.detailId = match ? decodeURIComponent(match[1]) : "";
  $("view-list").hidden = app.view !== "list";
  $("view-detail").hidden = app.view !== "detail";
  $("view-services").hidden = app.view !== "services";
  $("view-hub").hidden = app.view !== "hub";
  const nav = app.view === "services" || app.view === "hub" ? app.view : "workflows";
  for (const name of ["workflows", "services", "hub"]) {
    $(`nav-${name}`).setAttribute("aria-current", nav === name ? "page" : "false");
  }
  if (app.view === "detail") { app.detail = null; $("logs").replaceChildren(); }
  if (app.view === "services") focus([]);
  refreshView();
}

function refreshView() {
  if (!app.online) return;
  loadOverview();
  if (app.view === "list") loadList();
  else if (app.view === "detail") loadDetail();
  else if (app.view === "hub") pollMetrics();
}

window.addEventListener("hashchange", route);

// ---------------------------------------------------------------- list

async function loadList() {
  const f = app.filters;
  try {
    app.list = await call("query", { q: f.q, service: f.service, phase: f.phase, offset: f.offset, limit: PAGE });
  } catch (err) { return; }
  renderList();
  focus(app.list.workflows.map((w) => w.workflow_id));
}

// Tell the hub which workflows the page shows, so it pushes just those (and counts the rest).
function focus(ids) {
  const key = ids.join("\n");
  if (key === app.focused) return;
  app.focused = key;
  call("focus", { workflow_ids: ids }).catch(() => { app.focused = null; });
}

function workflowRow(w) {
  const pending = settle(w);
  const phaseCell = el("td", {}, phaseBadge(w.phase));
  if (pending) phaseCell.append(" ", el("span", { class: "pending", text: PENDING_LABEL[pending.op] }));
  const stage = [w.stage, w.current_action].filter(Boolean).join(" · ") || w.message || "";
  return el("tr", { "data-id": w.workflow_id, "data-phase": w.phase },
    el("td", { class: "name" }, el("a", { href: `#/w/${encodeURIComponent(w.workflow_id)}`,
      text: w.name || w.workflow_id, title: w.workflow_id })),
    el("td", { class: "sm", text: w.service_name }),
    phaseCell,
    el("td", { class: "col-progress" }, bar(w.progress, `${w.name || w.workflow_id} progress`)),
    el("td", { class: "opt clip", text: stage, title: w.message || stage }),
    el("td", { class: "opt", text: clock(w.created_at) }),
    el("td", { class: "sm", "data-duration": "", "data-created": w.created_at, "data-updated": w.updated_at,
      "data-phase": w.phase, text: duration(w) }),
    el("td", { class: "opt", "data-ago": w.updated_at, text: ago(w.updated_at) }));
}

// Swap a row's cells, but not the one holding the keyboard focus (a live update must not
// move a keyboard user's place).
function updateRow(row, fresh) {
  row.dataset.phase = fresh.dataset.phase;
  [...fresh.cells].forEach((cell, i) => {
    const old = row.cells[i];
    if (old && !old.contains(document.activeElement)) old.replaceWith(cell);
  });
}

function renderList() {
  const data = app.list;
  if (!data) return;
  const body = $("workflows").tBodies[0];
  const existing = new Map([...body.rows].map((row) => [row.dataset.id, row]));
  const rows = data.workflows.map((w) => {
    const fresh = workflowRow(w), old = existing.get(w.workflow_id);
    if (!old) return fresh;
    updateRow(old, fresh);
    return old;
  });
  const active = document.activeElement;
  body.replaceChildren(...rows);
  if (active && active !== document.activeElement && body.contains(active)) active.focus();
  $("empty").hidden = data.workflows.length > 0;
  const first = data.total ? data.offset + 1 : 0, last = data.offset + data.workflows.length;
  $("page-info").textContent = `${first}–${last} of ${data.total.toLocaleString()}`;
  $("prev").disabled = data.offset <= 0;
  $("next").disabled = last >= data.total;
  $("list-summary").textContent =
    `${data.active.toLocaleString()} active · ${data.all.toLocaleString()} known to the hub`;
  const counts = $("counts");
  counts.replaceChildren(...PHASES.filter((p) => data.counts[p]).map((p) => el("li", {},
    el("button", { type: "button", class: `chip ph-${p}`, "data-phase": p,
      "aria-pressed": app.filters.phase === p ? "true" : "false" },
      `${p} `, el("strong", { text: data.counts[p].toLocaleString() })))));
  const bulk = $("bulk-cancel");
  bulk.hidden = !canSteer() || !(app.filters.q || app.filters.service || app.filters.phase);
}

function setFilter(key, value) {
  app.filters[key] = value;
  app.filters.offset = 0;
  loadList();
}

$("filters").addEventListener("submit", (event) => event.preventDefault());
$("f-q").addEventListener("input", () => throttle("q", 250, () => setFilter("q", $("f-q").value.trim())));
$("f-service").addEventListener("change", () => setFilter("service", $("f-service").value));
$("f-phase").addEventListener("change", () => setFilter("phase", $("f-phase").value));
$("counts").addEventListener("click", (event) => {
  const chip = event.target.closest("button[data-phase]");
  if (!chip) return;
  const phase = app.filters.phase === chip.dataset.phase ? "" : chip.dataset.phase;
  $("f-phase").value = phase;
  setFilter("phase", phase);
});
$("prev").addEventListener("click", () => { app.filters.offset = Math.max(0, app.filters.offset - PAGE); loadList(); });
$("next").addEventListener("click", () => { app.filters.offset += PAGE; loadList(); });

for (const phase of ["active", ...PHASES]) {
  $("f-phase").append(el("option", { value: phase, text: phase === "active" ? "active (not finished)" : phase }));
}

$("bulk-cancel").addEventListener("click", () => {
  const f = app.filters;
  const can = app.list ? app.list.workflows.filter((w) => w.commands.includes("cancel")).length : 0;
  const scope = [f.q && `name contains “${f.q}”`, f.service && `service ${f.service}`,
    f.phase && `phase ${f.phase}`].filter(Boolean).join(", ");
  $("confirm-text").textContent = `Cancel every workflow matching ${scope} that can still be ` +
    `cancelled (${can} on this page, ${app.list ? app.list.total : 0} match in all)?`;
  $("confirm-reason").value = "";
  $("confirm").showModal();
});

$("confirm").addEventListener("close", async () => {
  if ($("confirm").returnValue !== "yes") return;
  const f = app.filters;
  try {
    const result = await call("cancel_many", { q: f.q, service: f.service, phase: f.phase,
      reason: $("confirm-reason").value });
    for (const id of result.sent) app.pending.set(id, { op: "cancel", phase: "" });
    const failed = Object.keys(result.failed).length;
    $("list-summary").textContent = `cancel sent to ${result.sent.length}` + (failed ? `, ${failed} failed` : "");
  } catch (err) {
    $("list-summary").textContent = `bulk cancel failed: ${err.message}`;
  }
  loadList();
});

// ---------------------------------------------------------------- detail

async function loadDetail() {
  const id = app.detailId;
  if (!id) return;
  try {
    const [detail, logs] = await Promise.all([
      call("workflow", { workflow_id: id, logs: 0 }),
      call("logs", { workflow_id: id, level: $("log-level").value, limit: 200 }),
    ]);
    if (id !== app.detailId) return;
    app.detail = detail;
    renderDetail(detail);
    focus([id, ...detail.tree.map((c) => c.workflow_id)]);
    renderLogs(logs.logs);
  } catch (err) {
    if (id !== app.detailId) return;
    $("detail-title").textContent = `Workflow ${id}`;
    $("detail-pending").textContent = err.message;
  }
}

function fact(dl, term, value) {
  if (value === "" || value === null || value === undefined) return;
  dl.append(el("dt", { text: term }), el("dd", {}, value));
}

function renderDetail(w) {
  const still = settle(w);
  $("detail-title").textContent = w.name || w.workflow_id;
  $("detail-phase").replaceWith(Object.assign(phaseBadge(w.phase), { id: "detail-phase" }));
  $("detail-pending").textContent = still ? PENDING_LABEL[still.op] : "";
  $("detail-bar").replaceChildren(bar(w.progress, "workflow progress"));
  const dl = $("detail-facts");
  dl.replaceChildren();
  fact(dl, "Workflow id", el("code", { text: w.workflow_id }));
  fact(dl, "Service", w.service_name);
  fact(dl, "Stage", w.stage);
  fact(dl, "Message", w.message);
  if (w.total_items) fact(dl, "Items", `${w.current_item} of ${w.total_items}`);
  fact(dl, "Action", w.current_action);
  fact(dl, "Started", clock(w.created_at));
  fact(dl, "Duration", duration(w));
  fact(dl, "Updated", ago(w.updated_at));
  if (w.parent_workflow_id) {
    fact(dl, "Parent", el("a", { href: `#/w/${encodeURIComponent(w.parent_workflow_id)}`,
      text: w.parent_workflow_id }));
  }
  if (w.trace_id) {
    const url = app.session.trace_url;
    fact(dl, "Trace", url
      ? el("a", { href: url.replace("{trace_id}", encodeURIComponent(w.trace_id)), rel: "noopener",
        target: "_blank", text: w.trace_id })
      : el("code", { text: w.trace_id }));
  }
  renderSteer(w, still);
  $("timeline").tBodies[0].replaceChildren(...w.history.map((c) => el("tr", {},
    el("td", { text: clock(c.at || 0) || c.timestamp || "" }),
    el("td", {}, c.from ? phaseBadge(c.from) : "", c.from ? " → " : "", phaseBadge(c.to)),
    el("td", { text: c.reason || "" }),
    el("td", {}, c.checkpoint_id ? el("code", { text: c.checkpoint_id }) : ""))));
  listOf("checkpoints", w.checkpoints, (c) => [el("code", { text: c.checkpoint_id }),
    ` ${c.reason || ""} `, el("span", { class: "muted", text: clock(c.at || 0) })], "none");
  listOf("errors", w.errors, (e) => [el("strong", { text: e.recoverable ? "recoverable: " : "fatal: " }),
    e.error, " ", el("span", { class: "muted", text: clock(e.at || 0) })], "none");
  listOf("children", w.tree, (c) => [el("a", { href: `#/w/${encodeURIComponent(c.workflow_id)}`,
    text: c.name || c.workflow_id, style: `margin-left:${(c.depth - 1) * 1.2}em` }), " ",
  phaseBadge(c.phase), ` ${Math.round(c.progress)}%`], "no children");
}

function listOf(id, items, render, empty) {
  const list = $(id);
  if (!items || items.length === 0) {
    list.replaceChildren(el("li", { class: "muted", text: empty }));
    return;
  }
  list.replaceChildren(...items.map((item) => el("li", {}, ...render(item))));
}

function renderSteer(w, pending) {
  const steer = canSteer();
  for (const op of ["pause", "resume", "cancel"]) {
    const button = $(`do-${op}`);
    const allowed = steer && w.commands.includes(op);
    button.hidden = !allowed;
    button.disabled = Boolean(pending);
  }
  $("reason-field").hidden = !steer;
  $("steer-note").textContent = !steer ? "This session may watch but not steer."
    : w.commands.length === 0 ? `Nothing to steer in phase ${w.phase}.` : "";
}

for (const op of ["pause", "resume", "cancel"]) {
  $(`do-${op}`).addEventListener("click", async () => {
    const w = app.detail;
    if (!w) return;
    $("steer-error").textContent = "";
    app.pending.set(w.workflow_id, { op, phase: w.phase });
    renderSteer(w, app.pending.get(w.workflow_id));
    $("detail-pending").textContent = PENDING_LABEL[op];
    const params = { workflow_id: w.workflow_id };
    if (op !== "resume") params.reason = $("reason").value;
    try {
      await call(op, params);
    } catch (err) {
      app.pending.delete(w.workflow_id);
      $("detail-pending").textContent = "";
      $("steer-error").textContent = `${op} failed: ${err.message}`;
      renderSteer(w, null);
    }
  });
}

function renderLogs(records) {
  const box = $("logs");
  const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
  box.replaceChildren(...(records.length ? records.map((r) => el("div", { class: `log lv-${r.level}` },
    el("span", { class: "t", text: clock(r.at) }), el("span", { class: "lv", text: r.level }),
    el("span", { class: "m", text: r.message }))) : [el("p", { class: "muted", text: "no log entries" })]));
  if ($("log-follow").checked || atEnd) box.scrollTop = box.scrollHeight;
}

$("log-level").addEventListener("change", loadDetail);
$("log-follow").addEventListener("change", () => { if ($("log-follow").checked) loadDetail(); });

// ---------------------------------------------------------------- services and anomalies

async function loadOverview() {
  try { app.overview = await call("overview", {}); } catch (err) { return; }
  renderOverview();
}

function health(s) {
  if (!s.connected) return el("span", { class: "health h-off", text: "disconnected" });
  return el("span", { class: `health h-${s.health}`, text: s.health === "late" ? "late" : "connected" });
}

function renderOverview() {
  const { services, anomalies } = app.overview;
  const select = $("f-service");
  const names = [...new Set(services.map((s) => s.service_name || s.service_id))].sort();
  const current = select.value;
  select.replaceChildren(el("option", { value: "", text: "all services" }),
    ...names.map((n) => el("option", { value: n, text: n })));
  select.value = names.includes(current) ? current : "";
  if (app.view !== "services") return;
  $("services").tBodies[0].replaceChildren(...services.map((s) => el("tr", {},
    el("td", {}, el("strong", { text: s.service_name || s.service_id }), " ",
      el("span", { class: "muted", text: s.service_id })),
    el("td", { text: s.instance_id }),
    el("td", { text: s.version }),
    el("td", { class: "opt", text: s.capabilities.join(", ") }),
    el("td", {}, health(s)),
    el("td", { text: s.rtt === null ? "–" : `${(s.rtt * 1000).toFixed(1)} ms` }),
    el("td", {}, el("a", { href: "#/", "data-service": s.service_name || s.service_id,
      text: `${s.active_workflows} active / ${s.workflows}` })))));
  $("anomalies").tBodies[0].replaceChildren(...anomalies.map((a) => el("tr", {},
    el("td", { class: "num", text: a.count }), el("td", { text: a.text }),
    el("td", { text: ago(a.last) }))));
  $("no-anomalies").hidden = anomalies.length > 0;
  $("anomalies").closest(".tablewrap").hidden = anomalies.length === 0;
}

$("services").addEventListener("click", (event) => {
  const link = event.target.closest("a[data-service]");
  if (!link) return;
  app.filters.service = link.dataset.service;
  app.filters.offset = 0;
  $("f-service").value = link.dataset.service;
});

// ---------------------------------------------------------------- hub figures

// The figures of GET /metrics (op "metrics": the same snapshot), asked for at most once a second
// and only while the Hub view is shown in a visible tab: otherwise the page asks nothing.
function pollMetrics() {
  if (app.metricsBusy || app.view !== "hub" || !app.online || document.hidden) return;
  app.metricsBusy = true;
  const started = Date.now();
  call("metrics", {})
    .then((figures) => { if (app.view === "hub") renderMetrics(figures); }, () => {})
    .finally(() => setTimeout(() => {
      app.metricsBusy = false;
      pollMetrics();
    }, Math.max(0, 1000 - (Date.now() - started))));
}

document.addEventListener("visibilitychange", pollMetrics);

function seconds(value) {
  if (!(value >= 0)) return "–";
  return value < 1 ? `${(value * 1000).toFixed(value < 0.01 ? 1 : 0)} ms` : `${value.toFixed(2)} s`;
}

function figureRows(id, rows) {
  $(id).tBodies[0].replaceChildren(...rows.map(([key, label, value]) => el("tr", {},
    el("th", { scope: "row" }, label),
    el("td", { class: "num", "data-metric": key, text: String(value) }))));
}

function renderMetrics(m) {
  figureRows("m-services", [
    ["services.connected", "Connected", m.services.connected],
    ["services.disconnected", "Disconnected", m.services.disconnected],
    ["connections_open", "Open connections", m.connections_open],
  ]);
  figureRows("m-workflows", Object.entries(m.workflows).map(([phase, n]) =>
    [`workflows.${phase}`, phaseBadge(phase), n]));
  figureRows("m-messages", Object.entries(m.messages_applied).map(([type, n]) =>
    [`messages_applied.${type}`, el("code", { text: type }), n]));
  const evicted = { workflow: "Workflows evicted", log: "Log entries evicted",
    workflow_log: "Workflow log entries evicted" };
  figureRows("m-health", [
    ["anomalies", "Anomalies", m.anomalies],
    ...Object.entries(m.evictions).map(([kind, n]) => [`evictions.${kind}`, evicted[kind] || kind, n]),
    ...(m.store ? [["store.lag_seconds", "Store lag", seconds(m.store.lag_seconds)],
      ["store.errors", "Failed store writes", m.store.errors]]
      : [["store", "Store", "none"]]),
  ]);
  const commands = Object.entries(m.commands).flatMap(([command, outcomes]) =>
    Object.entries(outcomes).map(([outcome, c]) => el("tr", {},
      el("th", { scope: "row" }, command), el("td", { text: outcome }),
      el("td", { class: "num", "data-metric": `commands.${command}.${outcome}.count`, text: String(c.count) }),
      el("td", { class: "num", text: `≤ ${seconds(c.p50_seconds)}` }),
      el("td", { class: "num", text: `≤ ${seconds(c.p99_seconds)}` }),
      el("td", { class: "num sm", text: seconds(c.count ? c.sum_seconds / c.count : NaN) }))));
  $("m-commands").tBodies[0].replaceChildren(...commands);
  $("m-commands").closest(".tablewrap").hidden = commands.length === 0;
  $("m-no-commands").hidden = commands.length > 0;
  $("hub-updated").textContent = `updated ${clock(Date.now() / 1000)}`;
}

// ---------------------------------------------------------------- clock

setInterval(() => {
  for (const cell of document.querySelectorAll("[data-duration]")) {
    cell.textContent = duration({ created_at: Number(cell.dataset.created),
      updated_at: Number(cell.dataset.updated), phase: cell.dataset.phase });
  }
  for (const cell of document.querySelectorAll("[data-ago]")) cell.textContent = ago(Number(cell.dataset.ago));
}, 1000);

boot();

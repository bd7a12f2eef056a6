// Drover's web view: fetches one page of JSON at a time and re-fetches what is on screen
// when the controller pushes a change notice over Server-Sent Events. No polling, no reload.
"use strict";

const state = { view: "tasks", page: 1, task: null, seen: null };
const $ = (sel) => document.querySelector(sel);

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function when(t) { return t ? esc(new Date(t).toLocaleString()) : ""; }
function cls(word) { return esc(String(word ?? "").split(" ")[0]); }
function invalid(i) { return i ? `<div class="invalid">Invalid: ${esc(i.key)}: ${esc(i.error)}</div>` : ""; }

async function get(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

function parseHash() {
  const h = decodeURIComponent(location.hash.replace(/^#/, "")) || "tasks";
  const parts = h.split("/");
  state.view = parts[0];
  state.task = parts[0] === "task" && parts.length >= 3 ? { ns: parts[1], name: parts[2] } : null;
}

function table(headers, rows) {
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>` +
    `<tbody>${rows.join("") || `<tr><td colspan="${headers.length}">none</td></tr>`}</tbody></table>`;
}
function pager(p) {
  return `<div class="pager"><button data-page="${p.page - 1}" ${p.page <= 1 ? "disabled" : ""}>‹ prev</button>` +
    `page ${p.page} of ${p.pages} · ${p.total} in all` +
    `<button data-page="${p.page + 1}" ${p.page >= p.pages ? "disabled" : ""}>next ›</button></div>`;
}
function chips(counts) {
  return `<div class="chips">${Object.entries(counts).map(([k, v]) => `<span class="chip ${cls(k)}">${esc(k)}: ${v}</span>`).join("")}</div>`;
}

function card(title, big, detail) {
  return `<div class="card"><h2>${esc(title)}</h2><div class="big">${esc(big)}</div><div class="detail">${detail}</div></div>`;
}
function counts(obj, skip) {
  return Object.entries(obj).filter(([k, v]) => k !== skip && v > 0).map(([k, v]) => `${esc(k)} ${v}`).join(" · ");
}

async function renderSummary() {
  const s = await get("/api/summary");
  $("#replica").textContent = `replica ${s.replica.id} (${s.replica.leader ? "leader" : "standby"}) · revision ${s.revision}`;
  $("#summary").innerHTML =
    card("Nodes", s.nodes.total, counts(s.nodes, "total")) +
    card("Tasks", s.tasks.total, counts(s.tasks, "total")) +
    card("Instances", s.instances.total, counts(s.instances, "total")) +
    card("Dead letters", s.dead_letters, "") +
    card("Runs", s.runs, "") +
    card("Invalid keys", s.invalid_keys, "");
}

const views = {
  async tasks() {
    const p = await get(`/api/tasks?page=${state.page}`);
    const rows = p.items.map((t) => {
      const link = `#task/${encodeURIComponent(t.namespace)}/${encodeURIComponent(t.name)}`;
      return `<tr><td><a href="${link}">${esc(t.namespace)}/${esc(t.name)}</a>${invalid(t.invalid)}</td>` +
        `<td>${esc(t.mode ?? "Invalid")}</td><td>${esc(t.desired ?? "")}</td>` +
        `<td class="${t.running > 0 ? "Running" : ""}">${t.running} running / ${t.instances}</td>` +
        `<td class="${cls(t.rollout)}">${esc(t.rollout ?? "")}</td><td>${esc(t.last_run ?? "")}</td>` +
        `<td>${when(t.next_run)}</td>` +
        `<td>${t.suspended ? '<span class="suspended">Suspended</span>' : ""}${t.invalid ? '<span class="Invalid">Invalid</span>' : ""} ${esc(t.pending ?? "")}</td></tr>`;
    });
    return table(["task", "mode", "desired", "instances", "rollout", "last run", "next run", "state"], rows) + pager(p);
  },
  async task() {
    const { ns, name } = state.task;
    const base = `/api/tasks/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
    const [inst, runs] = await Promise.all([get(`${base}/instances?page=${state.page}`), get(`${base}/runs`)]);
    let html = `<h3>${esc(ns)}/${esc(name)}</h3>`;
    if (!inst.task) return html + "<p>No such task.</p>";
    const t = inst.task;
    html += `<p>${esc(t.mode ?? "Invalid")} · desired ${esc(t.desired ?? "?")} · ${t.running} running · ` +
      `generation ${esc(t.generation ?? "?")}${t.rollout ? " · rollout " + esc(t.rollout) : ""}` +
      `${t.suspended ? ' · <span class="suspended">Suspended</span>' : ""}</p>${invalid(t.invalid)}`;
    html += chips(inst.phases);
    const rows = inst.page.items.map((i) =>
      `<tr><td>${esc(i.id)}${invalid(i.invalid)}</td><td>${esc(i.node)}</td>` +
      `<td class="${cls(i.phase)}">${esc(i.status)}</td><td>${i.restarts}</td><td>${esc(i.exit_code ?? "")}</td>` +
      `<td>${esc(i.health ?? "")}</td><td>${esc(i.attempt ?? "")}</td><td>${esc(i.stopping ?? "")}</td><td>${when(i.started_at)}</td></tr>`);
    html += table(["instance", "node", "status", "restarts", "exit", "health", "attempt", "stopping", "started"], rows) + pager(inst.page);
    if (runs.total > 0) {
      html += `<h3>Runs</h3>` + table(["run", "cause", "attempt", "started", "finished", "outcome", "exit"],
        runs.items.map((r) => `<tr><td>#${r.run}</td><td>${esc(r.cause)}</td><td>${r.attempt}</td><td>${when(r.started_at)}</td>` +
          `<td>${when(r.finished_at)}</td><td class="${cls(r.outcome)}">${esc(r.outcome)}</td><td>${esc(r.exit_code ?? "")}</td></tr>`));
    }
    return html;
  },
  async nodes() {
    const p = await get(`/api/nodes?page=${state.page}`);
    const rows = p.items.map((n) =>
      `<tr><td>${esc(n.name)}${invalid(n.invalid)}</td>` +
      `<td class="${n.alive ? "alive" : "dead"}">${n.alive ? "alive" : "dead"}${n.dead_since ? " since " + when(n.dead_since) : ""}</td>` +
      `<td class="${n.cordoned ? "cordoned" : ""}">${n.draining ? "draining" : n.cordoned ? "cordoned" : ""}</td>` +
      `<td>${esc(n.cpu ?? "")}</td><td>${esc(n.memory ?? "")}</td>` +
      `<td>${Object.entries(n.labels).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join("")}</td>` +
      `<td>${n.instances}</td><td>${esc(n.address ?? "")}</td></tr>`);
    return table(["node", "alive", "cordoned", "cpu", "memory", "labels", "instances", "address"], rows) + pager(p);
  },
  async deadletters() {
    const p = await get(`/api/deadletters?page=${state.page}`);
    const rows = p.items.map((d) =>
      `<tr><td>${esc(d.instance)}</td><td>${esc(d.task)}</td><td>${esc(d.run ?? "")}</td><td>${d.attempts}</td>` +
      `<td>${esc(d.last_error)}</td><td>${esc(d.exit_code ?? "")}</td><td>${when(d.time)}</td></tr>`);
    return table(["instance", "task", "run", "attempts", "last error", "exit", "time"], rows) + pager(p);
  },
  async events() {
    const p = await get(`/api/events?page=${state.page}`);
    const rows = p.items.map((e) => e.invalid
      ? `<tr><td colspan="6">${invalid(e.invalid)}</td></tr>`
      : `<tr><td>${when(e.time)}</td><td>${esc(e.kind)}</td><td>${esc(e.object)}</td><td>${esc(e.reason)}</td>` +
        `<td>${esc(e.message)}</td><td>${esc(e.source)}</td></tr>`);
    return table(["time", "kind", "object", "reason", "message", "source"], rows) + pager(p);
  },
  async invalid() {
    const p = await get(`/api/invalid?page=${state.page}`);
    const rows = p.items.map((i) => `<tr><td class="Invalid">${esc(i.key)}</td><td>${esc(i.error)}</td></tr>`);
    return table(["key", "why"], rows) + pager(p);
  },
};

// What each view shows, so a notice re-fetches only views whose parts moved.
const parts = {
  tasks: ["tasks", "instances"], task: ["tasks", "instances"], nodes: ["nodes", "instances"],
  deadletters: ["tasks"], events: ["events"], invalid: ["nodes", "tasks", "instances", "events"],
};

let rendering = null;
let again = false;
async function render() {
  // One render at a time; a notice during a render asks for exactly one more.
  if (rendering) { again = true; return rendering; }
  rendering = (async () => {
    do {
      again = false;
      try {
        const view = views[state.view] ? state.view : "tasks";
        document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === view || (view === "task" && a.dataset.view === "tasks")));
        const [html] = await Promise.all([views[view](), renderSummary()]);
        $("#main").innerHTML = html;
      } catch (e) {
        $("#main").innerHTML = `<p class="Failed">${esc(e.message)}</p>`;
      }
    } while (again);
    rendering = null;
  })();
  return rendering;
}

function onNotice(n) {
  const before = state.seen;
  state.seen = n;
  if (!before) return render();
  const view = views[state.view] ? state.view : "tasks";
  // The summary shows nodes, tasks and instances; the view its own parts.
  const shown = new Set(["nodes", "tasks", "instances", ...(parts[view] || [])]);
  if ([...shown].some((p) => n[p] !== before[p])) render();
}

function connect() {
  const es = new EventSource("/api/stream");
  es.addEventListener("change", (ev) => onNotice(JSON.parse(ev.data)));
  es.onopen = () => { $("#live").textContent = "live"; $("#live").classList.remove("off"); };
  // EventSource reconnects by itself; the first notice after it re-renders.
  es.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").classList.add("off"); state.seen = null; };
}

window.addEventListener("hashchange", () => { parseHash(); state.page = 1; render(); });
document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-page]");
  if (b) { state.page = Number(b.dataset.page); render(); }
});
parseHash();
render();
connect();

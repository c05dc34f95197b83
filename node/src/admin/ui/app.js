// The admin page: this node's status, every member, this node's load over time, presence
// and group lookups, and a drain with confirmation. It reads the admin API of the node
// that serves it (same origin) with the admin token typed in (kept in sessionStorage for
// the tab only), every 2 s. Charts: uPlot, from /metrics.
"use strict";

const REFRESH_MS = 2000;
// Samples kept for the charts: five minutes at one sample every REFRESH_MS.
const SAMPLES = 150;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("switchboard-admin-token") || "";
$("token").value = token;

function say(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "error" : "";
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) throw new Error("a valid admin token is needed: type it above and press Connect");
  if (response.status === 403) throw new Error("this token's scope does not cover that (read, write)");
  if (!response.ok) {
    let reason = `${response.status}`;
    try { reason += `: ${(await response.json()).error}`; } catch { /* not JSON */ }
    throw new Error(reason);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "-" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
}

function ago(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 1000 ? "now" : `${(ms / 1000).toFixed(1)} s ago`;
}

function renderStatus(s) {
  $("node-title").textContent = `node ${s.id}`;
  const fields = [
    ["id", s.id], ["state", s.state], ["ready", s.ready ? "yes" : "no"],
    ["Raft role", s.role], ["term", s.term], ["leader", s.leader ?? "none known"],
    ["members up", `${s.members_up} of ${s.members}`], ["connections", s.connections],
    ["groups", s.groups], ["presence entries", s.presence_entries],
    ["history buckets moving", s.history ? s.history.buckets_moving : "-"],
    ["version", s.version], ["uptime", `${s.uptime_secs} s`],
  ];
  const dl = $("status");
  dl.replaceChildren();
  for (const [k, v] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = String(v);
    dd.dataset.field = k;
    dl.append(dt, dd);
  }
}

function renderMembers(members) {
  const body = $("members").querySelector("tbody");
  body.replaceChildren();
  for (const m of members) {
    const row = document.createElement("tr");
    row.dataset.node = m.id;
    cell(row, m.self ? `${m.id} (this node)` : m.id);
    cell(row, m.role);
    const state = !m.up ? "down" : m.leaving ? "leaving" : "up";
    cell(row, state, state);
    cell(row, m.version);
    cell(row, m.addresses && m.addresses.ws);
    cell(row, m.connections);
    cell(row, m.groups);
    cell(row, m.buckets ? `${m.buckets.owner} / ${m.buckets.replica}` : "-");
    cell(row, m.self ? "-" : ago(m.last_seen_ms));
    body.appendChild(row);
  }
}

// Prometheus text: the value of an unlabelled sample.
function sample(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}

const series = { t: [], connections: [], published: [], delivered: [] };
let last = null;
let charts = null;

function makeCharts() {
  const width = Math.max(320, $("charts").clientWidth - 40);
  const axes = [{}, { size: 60 }];
  // The x axis is always the last five minutes, however few samples there are yet.
  const window = () => {
    const now = Date.now() / 1000;
    return [now - (SAMPLES * REFRESH_MS) / 1000, now];
  };
  const scales = { x: { time: true, range: window } };
  return {
    connections: new uPlot({
      title: "WebSocket connections", width, height: 180, axes, scales,
      series: [{}, { label: "connections", stroke: "#1f6feb", width: 2 }],
    }, [[], []], $("chart-connections")),
    messages: new uPlot({
      title: "Messages per second", width, height: 180, axes, scales,
      series: [{}, { label: "published", stroke: "#8250df", width: 2 },
        { label: "delivered", stroke: "#1a7f37", width: 2 }],
    }, [[], [], []], $("chart-messages")),
  };
}

function recordMetrics(text) {
  const now = Date.now() / 1000;
  const published = sample(text, "switchboard_messages_published_total");
  const delivered = sample(text, "switchboard_messages_delivered_total");
  const connections = sample(text, "switchboard_connections");
  if (last) {
    const dt = Math.max(now - last.t, 0.001);
    series.t.push(now);
    series.connections.push(connections);
    series.published.push(Math.max(0, (published - last.published) / dt));
    series.delivered.push(Math.max(0, (delivered - last.delivered) / dt));
    for (const k of Object.keys(series)) series[k].splice(0, Math.max(0, series[k].length - SAMPLES));
  }
  last = { t: now, published, delivered };
  if (!charts) charts = makeCharts();
  // For tests and the curious: what the charts hold.
  globalThis.switchboardSeries = series;
  charts.connections.setData([series.t, series.connections]);
  charts.messages.setData([series.t, series.published, series.delivered]);
}

async function refresh() {
  try {
    const [status, members, metrics] = await Promise.all([
      json("/v1/status"), json("/v1/members"), api("/metrics").then((r) => r.text()),
    ]);
    renderStatus(status);
    renderMembers(members.members);
    recordMetrics(metrics);
    say(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    say(String(e.message || e), true);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("switchboard-admin-token", token);
  refresh();
});

$("presence-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = $("presence").querySelector("tbody");
  body.replaceChildren();
  try {
    const user = encodeURIComponent($("presence-user").value.trim());
    const answer = await json(`/v1/presence/${user}`);
    for (const c of answer.connections) {
      const row = document.createElement("tr");
      cell(row, c.node);
      cell(row, c.connection);
      cell(row, new Date(c.connected_at).toISOString());
      body.appendChild(row);
    }
    if (!answer.connections.length) {
      const row = document.createElement("tr");
      cell(row, "not connected anywhere");
      body.appendChild(row);
    }
  } catch (e) {
    say(String(e.message || e), true);
  }
});

$("group-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const name = encodeURIComponent($("group-name").value.trim());
    $("group").textContent = JSON.stringify(await json(`/v1/groups/${name}`), null, 2);
  } catch (e) {
    say(String(e.message || e), true);
  }
});

$("drain").addEventListener("click", async () => {
  const id = $("node-title").textContent || "this node";
  const sure = window.confirm(
    `Drain ${id}? Its clients are closed with 1012 and reconnect to other nodes, its ` +
    "history is handed over, and it leaves the cluster. It keeps running until stopped.");
  if (!sure) return;
  try {
    await api("/v1/drain", { method: "POST" });
    say(`${id} is draining`);
    refresh();
  } catch (e) {
    say(String(e.message || e), true);
  }
});

refresh();
setInterval(refresh, REFRESH_MS);

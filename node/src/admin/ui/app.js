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

function duration(secs) {
  if (secs < 60) return `${secs} s`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ${secs % 60} s`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.floor((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d ${Math.floor((secs % 86400) / 3600)} h`;
}

// A label, its value, and a hint saying what the figure means (shown on hover).
function renderStatus(s) {
  $("node-title").textContent = `node ${s.id}`;
  const fields = [
    ["Node", s.id, "This node's number in the cluster (its --node-id)."],
    ["State", s.state, "serving; draining (closing its clients so they reconnect elsewhere); stopping."],
    ["Ready for clients", s.ready ? "yes" : "no",
      "Whether /readyz answers 200: load balancers send new clients only to ready nodes."],
    ["Raft role", s.role, "Its part in the presence registry's Raft group (who is connected where): " +
      "the leader commits changes, followers keep copies, a candidate is asking for votes."],
    ["Raft term", s.term, "The Raft election round: it grows by one with each election."],
    ["Raft leader", s.leader ?? "none known", "The node that commits presence changes now."],
    ["Members up", `${s.members_up} of ${s.members}`, "Nodes this node hears heartbeats from, of all it knows."],
    ["Clients connected here", s.connections, "WebSocket clients connected to this node now."],
    ["Groups with clients here", s.groups, "Groups at least one client of this node is in."],
    ["Connections in the cluster", s.presence_entries,
      "Every client connection of the whole cluster, as this node's copy of the presence registry counts them."],
    ["History buckets moving", s.history ? s.history.buckets_moving : "-",
      "Message history is spread over 1024 buckets kept by an owner and a replica node; " +
      "this many are being handed from one node to another now (0 when settled)."],
    ["Version", s.version, "The switchboard version this node runs."],
    ["Up for", duration(s.uptime_secs), "Time since this node started."],
  ];
  const dl = $("status");
  dl.replaceChildren();
  for (const [k, v, hint] of fields) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    dt.title = hint;
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
  begin();
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
      row.firstChild.colSpan = 3;
      body.appendChild(row);
    }
  } catch (e) {
    say(String(e.message || e), true);
  }
});

// A group's answer as rows: label, value, hint.
function groupRows(g) {
  const node = (id) => (id === null || id === undefined ? "none yet" : `node ${id}`);
  const rows = [
    ["Group", g.group, "The group's name, as publishers and clients write it."],
    ["Clients in it", g.connections, "Its clients' connections, on every node together."],
  ];
  for (const [id, n] of Object.entries(g.nodes || {})) {
    rows.push([`Clients on node ${id}`, n, "Its clients connected to that node."]);
  }
  if (g.interest) {
    rows.push(["Membership kept by", `${node(g.interest.owner)}, copy on ${node(g.interest.replica)}`,
      `Which nodes track where this group's clients are (bucket ${g.interest.bucket} of 1024).`]);
  }
  if (g.history) {
    rows.push(["History kept by", `${node(g.history.owner)}, replica on ${node(g.history.replica)}`,
      "The owner numbers the group's messages and answers recoveries; the replica takes over if it dies."]);
    rows.push(["History epoch", g.history.epoch ?? "-",
      "Positions are (epoch, offset): the epoch changes when the history moves to a new owner."]);
  } else {
    rows.push(["History", "none", "No --history rule matches this group: messages are delivered, not kept."]);
  }
  return rows;
}

$("group-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = $("group").querySelector("tbody");
  body.replaceChildren();
  try {
    const name = encodeURIComponent($("group-name").value.trim());
    for (const [label, value, hint] of groupRows(await json(`/v1/groups/${name}`))) {
      const row = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = label;
      th.title = hint;
      row.appendChild(th);
      cell(row, value);
      body.appendChild(row);
    }
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

// Refreshes every REFRESH_MS once the page may call the API: at once when the node has
// no admin tokens or one was typed in this tab, else after Connect (so no request is
// made that can only be refused).
let timer = null;
function begin() {
  refresh();
  if (timer === null) timer = setInterval(refresh, REFRESH_MS);
}

(async () => {
  try {
    const auth = await (await fetch("/ui/auth.json", { cache: "no-store" })).json();
    if (auth.token_required && !token) {
      say("This node needs an admin token (a read token shows everything, a write token also drains): " +
        "type it above and press Connect.");
      return;
    }
  } catch {
    // Not answered: refresh anyway (it says what fails, and retries every REFRESH_MS).
  }
  begin();
})();

// Switchboard's browser client: an ES module with no dependencies.
//
//   import { Switchboard } from "./switchboard.js";
//   const sb = new Switchboard({
//     url: "wss://example.com/ws/notifications/",  // the load balancer picks a node
//     token: () => localStorage.getItem("access"),  // or a string; called on every connect
//     groups: ["user_42"],                          // groups to follow (the user group too)
//     onMessage: (m) => console.log(m.group, m.data),
//     onRecovered: ({ group, recovered }) => { if (!recovered) refetch(group); },
//   });
//
// It connects with `?positions=1`, so every message arrives with its group and, for groups
// that keep history on the server (`--history`), its position (`epoch`, `offset`). It keeps
// the last position of each group and, whenever the connection ends (a node draining with
// 1012, a slow consumer closed with 4008, a gap closed with 4009, a node that died), it
// reconnects with exponential backoff and jitter, and subscribes to each group with
// `since`: the node replays what was missed, in order, and says whether that was all of it
// (`onRecovered`). 4001 (bad token) stops the client unless `token` is a function (it is
// asked again: a refreshed token); 4003 stops it. See docs/protocol.md.
//
// When `token` is a function, the client also refreshes an open connection's token before
// it expires (at 80% of its remaining life, at least a second and at most a minute before
// `exp`): it calls `token()` and sends the `refresh` op, so a node run with
// `--token-expiry close` never cuts it with 4001.
//
// The old snippet (`new WebSocket(url)` and `onmessage`) keeps working without this module.

const DEFAULTS = {
  backoff: { min: 250, max: 10000 },
  // A connection that lasted this long resets the backoff.
  stableAfter: 5000,
};

/** The `exp` claim (Unix seconds) of a JWT, read without verifying it; null if none. */
function expiresAt(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp : null;
  } catch {
    return null;
  }
}

/** Close codes after which retrying cannot help. */
const FINAL = new Set([4003]);

export class Switchboard {
  /**
   * @param {object} options
   * @param {string} [options.url] the WebSocket URL (without the token)
   * @param {string[]} [options.urls] several URLs, tried in turn (no load balancer)
   * @param {string|function(): (string|Promise<string>)} options.token the JWT
   * @param {string[]} [options.groups] groups to follow and recover
   * @param {Object<string, {epoch: number, offset: number}>} [options.positions] positions
   *   to start from (say, saved in sessionStorage by `positions()` before a page reload)
   * @param {function(object)} [options.onMessage] each message: `{group, data}` (or
   *   `b64data`), with `epoch` and `offset` for history groups
   * @param {function({group: string, recovered: boolean})} [options.onRecovered] each
   *   answer to a recovery; `recovered: false` means messages were lost: refetch
   * @param {function(string, object)} [options.onStatus] `"open"`, `"closed"` (with the
   *   code and reason) and `"stopped"`
   * @param {function(object)} [options.onReply] other replies (errors, pongs, presence)
   * @param {{min: number, max: number}} [options.backoff] reconnect delays, in ms
   * @param {function(string): WebSocket} [options.WebSocket] the WebSocket constructor
   */
  constructor(options) {
    this.options = { ...DEFAULTS, ...options };
    this.urls = options.urls || [options.url];
    this.groups = [...(options.groups || [])];
    this.positionsByGroup = { ...(options.positions || {}) };
    this.attempt = 0;
    this.turn = 0;
    this.stopped = false;
    this.ws = null;
    this.timer = null;
    this.refreshTimer = null;
    this.connects = 0;
    this.connect();
  }

  /** Each group's last position, to save and pass back as `options.positions`. */
  positions() {
    return { ...this.positionsByGroup };
  }

  /** Follows one more group (now, and after every reconnect). */
  subscribe(group) {
    if (!this.groups.includes(group)) this.groups.push(group);
    this.sendSubscribe(group);
  }

  /** Stops following a group. */
  unsubscribe(group) {
    this.groups = this.groups.filter((g) => g !== group);
    delete this.positionsByGroup[group];
    this.send({ op: "unsubscribe", group });
  }

  /** Sends an op as is (`{op: "ping"}`, `{op: "presence", user: "42"}`...). */
  send(op) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(op));
  }

  /** Closes the connection for good. */
  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000);
  }

  async connect() {
    if (this.stopped) return;
    const url = this.urls[this.turn % this.urls.length];
    this.turn += 1;
    let token = this.options.token;
    try {
      if (typeof token === "function") token = await token();
    } catch (e) {
      return this.retry(1006, `no token: ${e}`);
    }
    const sep = url.includes("?") ? "&" : "?";
    const target = `${url}${sep}token=${encodeURIComponent(token || "")}&positions=1`;
    const Ws = this.options.WebSocket || WebSocket;
    const ws = new Ws(target);
    this.ws = ws;
    let openedAt = 0;
    ws.onopen = () => {
      openedAt = Date.now();
      this.connects += 1;
      for (const group of this.groups) this.sendSubscribe(group);
      this.scheduleRefresh(token);
      this.status("open", { url, connects: this.connects });
    };
    ws.onmessage = (event) => this.receive(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(this.refreshTimer);
      const stable = openedAt && Date.now() - openedAt >= this.options.stableAfter;
      if (stable && event.code !== 1013) this.attempt = 0;
      this.retry(event.code, event.reason);
    };
  }

  /** Plans the refresh of `token` (when `token` is a function) before its `exp`. */
  scheduleRefresh(token) {
    clearTimeout(this.refreshTimer);
    const exp = expiresAt(token);
    if (typeof this.options.token !== "function" || exp === null) return;
    const left = exp * 1000 - Date.now();
    const margin = Math.min(60000, Math.max(1000, left * 0.2));
    this.refreshTimer = setTimeout(() => this.refresh(), Math.max(0, left - margin));
  }

  async refresh() {
    const ws = this.ws;
    let token;
    try {
      token = await this.options.token();
    } catch (e) {
      // No fresh token: the node closes the connection at `exp` (4001) and the client
      // reconnects, asking `token()` again.
      this.status("refresh_failed", { error: String(e) });
      return;
    }
    if (this.ws !== ws || !ws || ws.readyState !== 1) return;
    this.send({ op: "refresh", token });
    this.scheduleRefresh(token);
  }

  sendSubscribe(group) {
    const since = this.positionsByGroup[group];
    this.send(since ? { op: "subscribe", group, since } : { op: "subscribe", group });
  }

  receive(data) {
    if (typeof data !== "string") return; // positioned connections only get JSON text
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "message") {
      if (frame.epoch !== undefined) {
        this.positionsByGroup[frame.group] = { epoch: frame.epoch, offset: frame.offset };
      }
      this.call("onMessage", frame);
    } else if (frame.type === "subscribed") {
      // Recovered: the missed messages follow and move the position; otherwise (a fresh
      // subscription, or a recovery that failed) the client stands where it is told.
      if (frame.recovered !== true && frame.epoch !== undefined) {
        this.positionsByGroup[frame.group] = { epoch: frame.epoch, offset: frame.offset };
      }
      if (frame.recovered !== undefined) {
        this.call("onRecovered", { group: frame.group, recovered: frame.recovered });
      }
    } else {
      this.call("onReply", frame);
    }
  }

  retry(code, reason) {
    this.status("closed", { code, reason });
    const tokenRefreshes = typeof this.options.token === "function";
    if (this.stopped || FINAL.has(code) || (code === 4001 && !tokenRefreshes)) {
      this.stopped = true;
      this.status("stopped", { code, reason });
      return;
    }
    const { min, max } = this.options.backoff;
    const base = Math.min(max, min * 2 ** Math.min(this.attempt, 16));
    const delay = base * (0.5 + 0.5 * Math.random());
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  status(state, info) {
    this.call("onStatus", state, info);
  }

  call(name, ...args) {
    const f = this.options[name];
    if (typeof f === "function") {
      try {
        f(...args);
      } catch (e) {
        console.error(`switchboard: ${name} threw`, e);
      }
    }
  }
}

// realtime.js: the browser client of the realtime protocol, version 1.
//
// The contract is shared/PROTOCOL.md; docs/protocol.md is this server's reading of it.
// One multiplexed socket carries calls by package name, topic subscriptions that resume
// from offsets, job watches and token refreshes; the client reconnects with full-jitter
// backoff and moves off a draining server at once. A plain ES module with no
// dependencies and no build step: a browser loads it with <script type="module">, a
// bundler imports it, and Node runs it when a WebSocket constructor is injected.
//
// The token is never logged, never put in a URL and never copied into an error message.

/** Status codes: 0-9 come from the server (PROTOCOL.md 2.3), negative ones from this client. */
export const STATUS = Object.freeze({
  OK: 0,
  ERROR: 1,
  INVALID_DATA: 2,
  PERMISSION_DENIED: 3,
  NOT_FOUND: 4,
  RATE_LIMITED: 5,
  UNKNOWN_PACKAGE: 6,
  TIMEOUT: 7,
  CONFLICT: 8,
  UNAVAILABLE: 9,
  DISCONNECTED: -1, // the socket dropped while the call was in flight: the server may have done it
  CLIENT_TIMEOUT: -2, // no answer within the call's timeout, counted from the call
  ABORTED: -3, // the call's AbortSignal fired
  QUEUE_FULL: -4, // maxPending calls are already waiting for a connection
  CLOSED: -5, // client.close() was called, or the client stopped for good
});

/** Code to name, e.g. STATUS_NAMES[4] === "NOT_FOUND". */
export const STATUS_NAMES = Object.freeze(
  Object.fromEntries(Object.entries(STATUS).map(([name, code]) => [code, name])),
);

// Worth trying again later. DISCONNECTED is retryable but never retried by the client
// itself: only the application knows whether doing the call twice is harmless.
const RETRYABLE = new Set([
  STATUS.RATE_LIMITED,
  STATUS.TIMEOUT,
  STATUS.UNAVAILABLE,
  STATUS.DISCONNECTED,
]);

export class RealtimeError extends Error {
  /**
   * @param {number} code a STATUS code
   * @param {string} message
   * @param {{details?: unknown, reqId?: string | null}} [extra]
   */
  constructor(code, message, { details, reqId = null } = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.status = STATUS_NAMES[code] ?? "UNKNOWN";
    this.details = details;
    this.reqId = reqId;
    this.retryable = RETRYABLE.has(code);
    const after = details !== null && typeof details === "object" ? details.retry_after : undefined;
    this.retryAfter = typeof after === "number" ? after : undefined;
  }
}

/**
 * What to do after the server closed the socket with `code` (PROTOCOL.md 2.4, 2.5).
 * A close the client asked for (close(), or the drain below) never gets here.
 */
export const CLOSE_ACTIONS = Object.freeze({
  1000: "reconnect", // a normal closure the client did not ask for: the server wants it gone
  1001: "reconnect", // server going away (drain finished)
  1005: "reconnect", // closed without a status
  1006: "reconnect", // network loss, or the connection attempt failed
  1011: "reconnect", // a server bug on that socket; the next one is fine
  1012: "reconnect", // service restart
  1013: "reconnect", // slow consumer: the socket's outbound queue overflowed
  // The user holds the server's cap of sockets. Refused before it was authenticated, so
  // the backoff is not reset and keeps growing: back in once another of theirs closes.
  4409: "reconnect",
  // Sustained rate limiting. The caller's bucket refills with time, so coming back is
  // right, but not at once: the delay after a 4429 counts at least RATE_LIMITED_ATTEMPT
  // doublings even when the socket had been open (see _onClose).
  4429: "reconnect",
  1002: "terminal", // protocol error: a client bug, the next socket would be refused again
  1003: "terminal", // a binary frame: a client bug
  1007: "terminal", // invalid UTF-8: a client bug
  1008: "terminal", // repeated invalid frames
  1009: "terminal", // a frame over the server's maximum: the application sent too much
  4401: "terminal", // unauthenticated: no, invalid or expired token
  4403: "terminal", // forbidden origin
  // An administrator closed all the user's sockets (sessions.disconnect): not with the
  // same token; a provider is asked once for a fresh one, as after 4401.
  4410: "terminal",
});

/** "reconnect" or "terminal"; a code not in CLOSE_ACTIONS reconnects (with backoff). */
export function closeAction(code) {
  return CLOSE_ACTIONS[code] ?? "reconnect";
}

const RATE_LIMITED_ATTEMPT = 3; // 4429 waits up to base * 8 (4 s with the defaults)
const DRAIN_WAIT_MS = 2000; // how long a draining socket may keep in-flight calls
const DEFAULT_BACKOFF = Object.freeze({ base: 500, max: 15000 });

// Used only when the application passes its own `packages` map without these names: the
// client sends them itself, and docs/protocol.md fixes their ids.
const BUILTIN_IDS = Object.freeze({
  "auth.refresh": 42,
  "topics.subscribe": 30,
  "topics.unsubscribe": 31,
  "topics.presence": 33,
  "topics.channels": 35,
  "jobs.watch": 23,
});

/**
 * Full jitter: a uniform delay in [0, min(max, base * 2**attempt)), so that clients
 * dropped together by one server do not come back together.
 */
export function backoffDelay(attempt, { base = 500, max = 15000 } = {}, random = Math.random) {
  return Math.floor(random() * Math.min(max, base * 2 ** attempt));
}

/** A bounded FIFO of calls waiting for a connection. */
export class PendingQueue {
  constructor(limit) {
    this.limit = limit;
    this._items = [];
  }

  get size() {
    return this._items.length;
  }

  /** False when full: the caller rejects the item instead. */
  push(item) {
    if (this._items.length >= this.limit) return false;
    this._items.push(item);
    return true;
  }

  shift() {
    return this._items.shift();
  }

  remove(item) {
    const i = this._items.indexOf(item);
    if (i >= 0) this._items.splice(i, 1);
    return i >= 0;
  }

  drain() {
    const items = this._items;
    this._items = [];
    return items;
  }
}

/** A socket URL, absolute: relative ones resolve against the page, http(s) becomes ws(s). */
function socketUrl(url) {
  const u = new URL(url, globalThis.location?.href);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  return u.href;
}

/** ws://h:p/anything -> http://h:p/packages (wss -> https). */
function catalogUrlFor(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  u.pathname = "/packages";
  u.search = "";
  u.hash = "";
  return u.href;
}

/** name -> {pkg_id, paginated} from the application's map (ids, or catalog-like entries). */
function catalogFromMap(packages) {
  const entries = Object.entries({ ...BUILTIN_IDS, ...packages });
  return new Map(
    entries.map(([name, v]) => [
      name,
      typeof v === "number" ? { pkg_id: v, paginated: false } : { paginated: false, ...v },
    ]),
  );
}

function clientError(code, message, reqId = null) {
  return new RealtimeError(code, message, { reqId });
}

function answerError(msg, reqId) {
  const error = msg.error ?? {};
  return new RealtimeError(msg.status_code, error.message ?? String(STATUS_NAMES[msg.status_code]), {
    details: error.details,
    reqId,
  });
}

/** A topic subscription; created by client.subscribe(). */
export class Subscription {
  constructor(client, topic, onMessage, { since, onReset, onPresence } = {}) {
    if (onPresence !== undefined && typeof onPresence !== "function") {
      throw new TypeError("onPresence must be a function");
    }
    this.topic = topic;
    this._client = client;
    this._onMessage = onMessage;
    this._onReset = onReset;
    this._onPresence = onPresence;
    this._members = new Map(); // sub -> {sub, name}: the pushed presence, when asked for
    this._capped = false;
    this._offset = since; // the resume point: last delivered, or where the server said we are
    this._active = true;
    this._settled = false; // ready has resolved or rejected
    this._conn = null; // the socket the last topics.subscribe went out on
    this._syncing = Promise.resolve(); // settles when that topics.subscribe is answered
    this._retries = 0;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    // Nobody has to await `ready`: an unobserved failure must not be an unhandled rejection.
    this.ready.catch(() => {});
  }

  /** The last offset known for the topic (opaque). */
  get offset() {
    return this._offset;
  }

  get active() {
    return this._active;
  }

  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  presence() {
    return this._client.presence(this.topic);
  }

  /** With `onPresence`: who is on the topic now, sorted by `sub` (one entry per user). */
  get members() {
    const bySub = (a, b) => (a.sub < b.sub ? -1 : a.sub > b.sub ? 1 : 0);
    return [...this._members.values()].sort(bySub);
  }

  /** The topic has more members than the server pushes: `members` is the first ones, frozen. */
  get capped() {
    return this._capped;
  }

  /** Each subscribe answer brings a fresh snapshot (also after a reconnect): it replaces ours. */
  _snapshot(answer) {
    if (!this._onPresence || !Array.isArray(answer.presence)) return;
    this._members = new Map(answer.presence.map((m) => [m.sub, m]));
    this._capped = answer.presence_capped === true;
    this._tellPresence({ kind: "snapshot", member: null });
  }

  _presenceEvent(msg) {
    const member = msg.data;
    if (!this._onPresence || typeof member?.sub !== "string") return;
    if (msg.event === "presence.join") this._members.set(member.sub, member);
    else this._members.delete(member.sub);
    this._tellPresence({ kind: msg.event === "presence.join" ? "join" : "leave", member });
  }

  _tellPresence(change) {
    const members = this.members;
    this._client._safe(() => this._onPresence(members, { ...change, capped: this._capped }));
  }

  _confirm(answer) {
    if (this._settled) return;
    this._settled = true;
    this._resolve(answer);
  }

  _end(err) {
    this._active = false;
    if (this._settled) return;
    this._settled = true;
    this._reject(err);
  }
}

export class RealtimeClient {
  constructor(url, options = {}) {
    const o = options;
    if (typeof o.token !== "string" && typeof o.token !== "function") {
      throw new TypeError("options.token must be a string or a function returning one");
    }
    this._authMode = o.auth ?? "frame";
    if (this._authMode !== "frame" && this._authMode !== "subprotocol") {
      throw new TypeError('options.auth must be "frame" or "subprotocol"');
    }
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("no WebSocket constructor here: pass options.WebSocket");
    }
    this._url = socketUrl(url);
    this._token = o.token;
    this._catalogUrl = o.catalogUrl ?? catalogUrlFor(this._url);
    this._catalog = o.packages ? catalogFromMap(o.packages) : null;
    this._provisional = false; // the catalog holds only the built-in ids (see below)
    this._callTimeout = o.callTimeout ?? 10000;
    this._backoff = { ...DEFAULT_BACKOFF, ...o.backoff };
    // Wrapped, not stored bare: window.fetch called without its `this` throws.
    this._fetch = o.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this._random = o.random ?? Math.random;
    this._setTimeout = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = o.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this._queue = new PendingQueue(o.maxPending ?? 100);
    this._inflight = new Map(); // req_id -> call record, sent and not answered
    this._subs = new Map(); // topic -> Subscription
    // topic -> last offset seen, of the server's own subscriptions (the personal channel,
    // connect hooks): resumed at the next connect with ?since.<topic>=<offset>
    this._serverOffsets = new Map();
    this._watches = new Map(); // job_id -> watch
    this._handlers = { state: new Set(), event: new Set(), error: new Set() };
    this._waiters = []; // ready() promises waiting for "open"
    this._seq = 0;
    this._conn = null; // the current socket and its flags
    this._attempt = 0;
    this._authRetried = false; // a terminal close already got its fresh-token retry
    this._timer = null;
    this._closed = false;
    this._state = "connecting";
    // Deferred so that handlers attached right after connect() see every event.
    queueMicrotask(() => this._connect("connect"));
  }

  get state() {
    return this._state;
  }

  /** Returns a function that removes the handler again. */
  on(event, handler) {
    this._handlerSet(event).add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this._handlerSet(event).delete(handler);
  }

  ready() {
    if (this._state === "open") return Promise.resolve();
    if (this._closed) return Promise.reject(clientError(STATUS.CLOSED, "the client is closed"));
    return new Promise((resolve, reject) => this._waiters.push({ resolve, reject }));
  }

  call(name, data = {}, { timeout = this._callTimeout, signal } = {}) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(clientError(STATUS.CLOSED, "the client is closed"));
      if (signal?.aborted) return reject(clientError(STATUS.ABORTED, "the call was aborted"));
      const rec = this._record(name, data, resolve, reject, { timeout, signal });
      if (this._catalog && !this._provisional && !this._catalog.has(name)) {
        return this._unknown(rec);
      }
      if (this._canSend() && this._queue.size === 0) return this._send(rec, this._conn);
      if (!this._queue.push(rec)) {
        const limit = this._queue.limit;
        this._fail(rec, STATUS.QUEUE_FULL, `${limit} calls are already waiting for a connection`);
      }
    });
  }

  subscribe(topic, onMessage, options = {}) {
    if (typeof onMessage !== "function") throw new TypeError("onMessage must be a function");
    const sub = new Subscription(this, topic, onMessage, options);
    if (this._closed) {
      sub._end(clientError(STATUS.CLOSED, "the client is closed"));
      return sub;
    }
    // The server replaces a socket's subscription to the same topic; so does the client.
    this._subs.get(topic)?._end(clientError(STATUS.ABORTED, "replaced by a newer subscription"));
    this._subs.set(topic, sub);
    if (this._canSend()) this._syncSub(sub, this._conn);
    return sub;
  }

  presence(topic) {
    return this.call("topics.presence", { topic }).then((answer) => answer.presence);
  }

  watchJob(jobId, onProgress) {
    return new Promise((resolve, reject) => {
      if (this._closed) return reject(clientError(STATUS.CLOSED, "the client is closed"));
      const listener = { onProgress, resolve, reject };
      const existing = this._watches.get(jobId);
      // A second watch of the same job joins the first: it sees the progress from now on.
      if (existing) return existing.listeners.push(listener);
      const watch = {
        jobId,
        listeners: [listener],
        offset: undefined, // the last job event's offset: where a re-watch resumes
        lastStep: undefined,
        answered: false,
        retries: 0,
        target: undefined, // where this socket's replay of the job's topic ends
        heldDone: undefined, // a job.done from the personal channel, held until then
      };
      this._watches.set(jobId, watch);
      if (this._canSend()) this._syncWatch(watch, this._conn);
    });
  }

  close() {
    if (this._closed) return;
    this._shutdown(1000, "closed by the client");
  }

  // -- calls ---------------------------------------------------------------------------

  _record(name, data, resolve, reject, { timeout, signal }) {
    const rec = { reqId: String(++this._seq), name, data, resolve, reject };
    rec.conn = null; // set once, when sent: a call is never sent twice
    rec.done = false;
    rec.timer = null;
    rec.signal = signal;
    // The timeout runs from the call, not from the send, so a queued call times out too.
    if (Number.isFinite(timeout) && timeout > 0) {
      rec.timer = this._setTimeout(
        () => this._fail(rec, STATUS.CLIENT_TIMEOUT, `no answer within ${timeout} ms`),
        timeout,
      );
    }
    if (signal) {
      rec.onAbort = () => this._fail(rec, STATUS.ABORTED, "the call was aborted");
      signal.addEventListener("abort", rec.onAbort, { once: true });
    }
    return rec;
  }

  _canSend() {
    const conn = this._conn;
    return conn !== null && conn.authed && !conn.draining;
  }

  _send(rec, conn) {
    const pkg = this._catalog.get(rec.name);
    if (!pkg) return this._unknown(rec);
    let frame;
    try {
      frame = JSON.stringify({ pkg_id: pkg.pkg_id, req_id: rec.reqId, data: rec.data ?? {} });
    } catch (err) {
      if (this._settle(rec)) rec.reject(err); // not serializable: the application's bug
      return;
    }
    rec.conn = conn;
    rec.paginated = pkg.paginated === true;
    this._inflight.set(rec.reqId, rec);
    try {
      conn.ws.send(frame);
    } catch {
      this._fail(rec, STATUS.DISCONNECTED, "the socket refused the frame");
    }
  }

  _unknown(rec) {
    this._fail(rec, STATUS.UNKNOWN_PACKAGE, `unknown package ${rec.name}`);
  }

  /** Sends the queued calls, in order, while the socket takes them. */
  _flush(conn) {
    while (this._queue.size > 0 && this._conn === conn && this._canSend()) {
      this._send(this._queue.shift(), conn);
    }
  }

  /** The client's own request on one socket: never queued, answered through callbacks. */
  _request(conn, name, data, onOk, onError) {
    const rec = this._record(name, data, onOk, onError, { timeout: this._callTimeout });
    if (conn !== this._conn || conn.done) {
      return this._fail(rec, STATUS.DISCONNECTED, "the socket is gone");
    }
    this._send(rec, conn);
  }

  /** Takes the record out of every list, once; false when it was already settled. */
  _settle(rec) {
    if (rec.done) return false;
    rec.done = true;
    if (rec.timer !== null) this._clearTimeout(rec.timer);
    rec.signal?.removeEventListener("abort", rec.onAbort);
    if (rec.conn === null) this._queue.remove(rec);
    else this._inflight.delete(rec.reqId);
    if (rec.conn?.draining) this._checkDrain(rec.conn);
    return true;
  }

  _fail(rec, code, message) {
    if (this._settle(rec)) rec.reject(clientError(code, message, rec.conn ? rec.reqId : null));
  }

  _onAnswer(msg) {
    const rec = typeof msg.req_id === "string" ? this._inflight.get(msg.req_id) : undefined;
    if (rec === undefined) {
      // req_id null: the server could not read one of our frames. Otherwise a late
      // answer to a call that already timed out or was aborted.
      if (msg.req_id === null) this._emit("error", answerError(msg, null));
      return;
    }
    if (!this._settle(rec)) return;
    if (msg.status_code !== STATUS.OK) return rec.reject(answerError(msg, rec.reqId));
    // `meta` comes only with paginated packages, so it also covers a bare packages map.
    const paged = rec.paginated || msg.meta !== undefined;
    rec.resolve(paged ? { data: msg.data, meta: msg.meta } : msg.data);
  }

  // -- the socket ----------------------------------------------------------------------

  async _connect(tokenReason) {
    this._timer = null;
    if (this._closed) return;
    let token;
    try {
      if (!this._catalog) await this._catalogOrProvisional();
      if (this._closed) return;
      token = await this._tokenFor(tokenReason);
    } catch (err) {
      if (this._closed) return;
      this._emit("error", err);
      return this._retry(null, err instanceof RealtimeError ? err.message : "token provider failed");
    }
    if (this._closed) return;
    this._open(token);
  }

  _open(token) {
    let ws;
    try {
      ws =
        this._authMode === "subprotocol"
          ? new this._WebSocket(this._resumeUrl(), ["realtime.v1", `bearer.${token}`])
          : new this._WebSocket(this._resumeUrl());
    } catch {
      // The constructor's own message may quote the subprotocols, hence the token.
      this._emit("error", clientError(STATUS.DISCONNECTED, "could not open the socket"));
      return this._retry(null, "could not open the socket");
    }
    const conn = { ws, authed: false, confirmed: false, draining: false, done: false };
    conn.drainTimer = null;
    conn.reconnectNow = false;
    this._conn = conn;
    ws.onopen = () => this._onOpen(conn, token);
    ws.onmessage = (event) => this._onFrame(conn, event.data);
    ws.onclose = (event) => this._onClose(conn, event.code, event.reason ?? "");
    ws.onerror = () => {}; // a close event follows every error, and decides
  }

  /**
   * The catalog, or else the built-in ids only (provisional): the socket opens anyway, so
   * that a refused origin (4403) or token (4401) is told apart from an outage. A page on
   * an origin the server does not allow cannot read /packages (CORS) and would otherwise
   * retry for ever without learning why. The catalog is fetched again once authenticated.
   */
  async _catalogOrProvisional() {
    try {
      this._catalog = await this._loadCatalog();
      this._provisional = false;
    } catch (err) {
      this._emit("error", err);
      this._catalog = catalogFromMap({});
      this._provisional = true;
    }
  }

  async _loadCatalog() {
    try {
      const response = await this._fetch(this._catalogUrl, {
        headers: { accept: "application/json" },
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const list = await response.json();
      if (!Array.isArray(list)) throw new Error("not a list");
      return new Map(
        list.map((p) => [p.name, { pkg_id: p.pkg_id, paginated: p.paginated === true }]),
      );
    } catch (err) {
      throw new RealtimeError(STATUS.UNAVAILABLE, `package catalog unavailable (${err.message})`);
    }
  }

  async _tokenFor(reason) {
    const token = typeof this._token === "function" ? await this._token({ reason }) : this._token;
    if (typeof token !== "string" || token === "") {
      throw new TypeError("the token provider returned no token");
    }
    return token;
  }

  _onOpen(conn, token) {
    if (conn.done) return;
    if (this._authMode === "subprotocol") return this._onAuthenticated(conn);
    // First-frame auth: auth.refresh goes first and everything else waits for its answer.
    this._request(
      conn,
      "auth.refresh",
      { token },
      () => {
        this._confirm(conn);
        this._onAuthenticated(conn);
      },
      (err) => {
        if (conn.done) return; // the close that rejected it is already handled
        // Refused (the server normally closes with 4401 instead): the terminal path.
        // No answer in time: a failed attempt like any other.
        if (err.code >= 0) this._abandon(conn, 4401, err.message);
        else this._abandon(conn, 1006, "no answer to auth.refresh");
      },
    );
  }

  _onAuthenticated(conn) {
    if (conn.done) return;
    if (this._provisional) return this._catalogThenAuthenticated(conn);
    conn.authed = true;
    // Resume first, so that queued calls see the subscriptions in place.
    for (const sub of this._subs.values()) this._syncSub(sub, conn);
    for (const watch of this._watches.values()) this._syncWatch(watch, conn);
    this._askChannels(conn);
    this._flush(conn);
    this._setState("open", { code: null, reason: "", attempt: this._attempt, delay: 0 });
  }

  /** Authenticated on built-in ids only: nothing else goes out before the real catalog. */
  _catalogThenAuthenticated(conn) {
    this._loadCatalog().then(
      (catalog) => {
        this._catalog = catalog;
        this._provisional = false;
        this._onAuthenticated(conn);
      },
      (err) => {
        if (conn.done) return;
        this._emit("error", err);
        this._abandon(conn, 1006, err.message);
      },
    );
  }

  /**
   * The server accepted our token: reset the backoff and the fresh-token retry. With
   * first-frame auth that is the auth.refresh answer; with the subprotocol the socket
   * opens before the server has looked at the token (a bad one is closed with 4401 right
   * after), so it is the first frame the server sends.
   */
  _confirm(conn) {
    if (conn.confirmed) return;
    conn.confirmed = true;
    this._attempt = 0;
    this._authRetried = false;
  }

  _onFrame(conn, raw) {
    if (conn.done) return;
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      msg = null;
    }
    if (msg === null || typeof msg !== "object") {
      return this._emit("error", clientError(STATUS.ERROR, "the server sent a frame that is not a JSON object"));
    }
    if (this._authMode === "subprotocol") this._confirm(conn);
    if (typeof msg.event === "string") this._onEvent(conn, msg);
    else this._onAnswer(msg);
  }

  /** Closes the socket ourselves and handles it as closed with `code`. */
  _abandon(conn, code, reason) {
    try {
      conn.ws.close(1000);
    } catch {
      // already closing
    }
    this._onClose(conn, code, reason);
  }

  _onClose(conn, code, reason) {
    if (conn.done) return; // later events of an abandoned socket
    conn.done = true;
    if (conn.drainTimer !== null) this._clearTimeout(conn.drainTimer);
    if (this._conn === conn) this._conn = null;
    for (const rec of [...this._inflight.values()]) {
      if (rec.conn === conn) {
        this._fail(rec, STATUS.DISCONNECTED, "the connection dropped before the answer");
      }
    }
    if (this._closed) return;
    if (conn.reconnectNow) return this._reconnect(code, reason, 0, "connect");
    if (closeAction(code) === "terminal") {
      // Perhaps only the token was stale: a provider gets one chance to give a fresh one.
      if (typeof this._token === "function" && !this._authRetried) {
        this._authRetried = true;
        return this._reconnect(code, reason, 0, "rejected");
      }
      return this._shutdown(code, reason);
    }
    if (code === 4429) this._attempt = Math.max(this._attempt, RATE_LIMITED_ATTEMPT);
    this._retry(code, reason);
  }

  _retry(code, reason) {
    const attempt = this._attempt++;
    const delay = backoffDelay(attempt, this._backoff, this._random);
    this._reconnect(code, reason, delay, "connect", attempt);
  }

  _reconnect(code, reason, delay, tokenReason, attempt = this._attempt) {
    this._setState("reconnecting", { code, reason, attempt, delay });
    if (delay <= 0) return void this._connect(tokenReason);
    this._timer = this._setTimeout(() => this._connect(tokenReason), delay);
  }

  /** The end: state "closed", and every call, subscription and watch is told CLOSED. */
  _shutdown(code, reason) {
    this._closed = true;
    if (this._timer !== null) this._clearTimeout(this._timer);
    this._timer = null;
    const conn = this._conn;
    this._conn = null;
    if (conn) {
      conn.done = true;
      if (conn.drainTimer !== null) this._clearTimeout(conn.drainTimer);
      try {
        conn.ws.close(1000);
      } catch {
        // already closing
      }
    }
    const message = code === 1000 ? "the client is closed" : `the client stopped: ${code} ${reason}`;
    for (const rec of [...this._inflight.values()]) this._fail(rec, STATUS.CLOSED, message);
    for (const rec of this._queue.drain()) this._fail(rec, STATUS.CLOSED, message);
    for (const sub of this._subs.values()) sub._end(clientError(STATUS.CLOSED, message));
    this._subs.clear();
    for (const watch of this._watches.values()) {
      for (const l of watch.listeners) l.reject(clientError(STATUS.CLOSED, message));
    }
    this._watches.clear();
    this._setState("closed", { code, reason, attempt: this._attempt, delay: 0 });
  }

  _setState(state, { code, reason, attempt, delay }) {
    this._state = state;
    if (state === "open" || state === "closed") {
      const waiters = this._waiters;
      this._waiters = [];
      for (const w of waiters) {
        if (state === "open") w.resolve();
        else w.reject(clientError(STATUS.CLOSED, "the client is closed"));
      }
    }
    this._emit("state", { state, code, reason, attempt, delay });
  }

  // -- events --------------------------------------------------------------------------

  _onEvent(conn, msg) {
    this._noteServerOffset(msg);
    this._emit("event", msg);
    switch (msg.event) {
      case "message":
        return this._onMessage(msg);
      case "job.progress":
      case "job.done":
        return this._onJobEvent(msg);
      case "subscription.recovered":
        return this._onRecovered(msg);
      case "presence.join":
      case "presence.leave":
        return void this._subs.get(msg.topic)?._presenceEvent(msg);
      case "auth.expiring":
        return void this._refresh(conn);
      case "server.draining":
        return this._drain(conn);
    }
  }

  /**
   * An event on a topic this client did not subscribe to (nor watches) comes from one of
   * the server's own subscriptions: remember where it is, to resume it at the next connect.
   */
  _noteServerOffset(msg) {
    if (typeof msg.topic !== "string" || typeof msg.offset !== "string") return;
    if (this._subs.has(msg.topic) || msg.topic.startsWith("job:")) return;
    this._serverOffsets.set(msg.topic, msg.offset);
  }

  /**
   * Where the server's own subscriptions stand, so that one that has been quiet so far
   * (no event yet, so no offset) is resumed at the next connect too. The answer comes
   * after every event it counts, so its offsets replace ours: newer, or of a new epoch.
   */
  _askChannels(conn) {
    if (!this._catalog.has("topics.channels")) return; // a server from before it
    const noted = (answer) => {
      for (const { topic, offset } of answer?.channels ?? []) {
        if (typeof topic !== "string" || typeof offset !== "string") continue;
        if (!this._subs.has(topic)) this._serverOffsets.set(topic, offset);
      }
    };
    // Refused (a server without it, or a permissions file that omits it): the events'
    // offsets are all there is, as before. Reported, not fatal.
    this._request(conn, "topics.channels", {}, noted, (err) => {
      if (err.code >= 0) this._emit("error", err);
    });
  }

  /** The socket's URL, asking the server to resume its own subscriptions where we were. */
  _resumeUrl() {
    if (this._serverOffsets.size === 0) return this._url;
    const url = new URL(this._url);
    for (const [topic, offset] of this._serverOffsets) {
      url.searchParams.set(`since.${topic}`, offset);
    }
    return url.toString();
  }

  _onMessage(msg) {
    const sub = this._subs.get(msg.topic);
    if (!sub) return; // unsubscribed: delivery stops at once
    sub._offset = msg.offset;
    this._safe(() => sub._onMessage(msg.data, { topic: msg.topic, offset: msg.offset }));
  }

  /** The bus came back; recovered false means the stream was reset: the app reloads. */
  _onRecovered(msg) {
    const sub = this._subs.get(msg.topic);
    const data = msg.data ?? {};
    if (!sub || data.recovered !== false) return;
    if (data.offset !== undefined) sub._offset = data.offset;
    this._reset(sub, data.offset);
  }

  _reset(sub, offset) {
    if (sub._onReset) {
      this._safe(() => sub._onReset({ topic: sub.topic, offset, reason: "not recovered" }));
    }
  }

  async _refresh(conn) {
    if (typeof this._token !== "function") return; // a fixed token has nothing fresher
    try {
      const token = await this._tokenFor("expiring");
      if (conn.done) return;
      await new Promise((resolve, reject) => {
        this._request(conn, "auth.refresh", { token }, resolve, reject);
      });
    } catch (err) {
      // The server closes with 4401 at exp; _onClose then tries the provider once more.
      if (!conn.done) this._emit("error", err);
    }
  }

  /** server.draining: queue new calls, let the in-flight ones finish, then move at once. */
  _drain(conn) {
    if (conn.draining || conn !== this._conn) return;
    conn.draining = true;
    conn.drainTimer = this._setTimeout(() => this._finishDrain(conn), DRAIN_WAIT_MS);
    this._checkDrain(conn);
  }

  _checkDrain(conn) {
    if (conn.done) return;
    for (const rec of this._inflight.values()) if (rec.conn === conn) return;
    this._finishDrain(conn);
  }

  _finishDrain(conn) {
    if (conn.done) return;
    conn.reconnectNow = true;
    this._abandon(conn, 1000, "server draining");
  }

  // -- subscriptions and job watches ---------------------------------------------------

  _syncSub(sub, conn) {
    const since = sub._offset;
    const data = since === undefined ? { topic: sub.topic } : { topic: sub.topic, since };
    if (sub._onPresence) data.presence = true;
    let settled;
    sub._conn = conn;
    sub._syncing = new Promise((resolve) => (settled = resolve));
    // Callbacks, not a promise: the answer must be taken before the replay that follows
    // it in the same turn, or a replayed offset would be overwritten by the answer's.
    this._request(
      conn,
      "topics.subscribe",
      data,
      (answer) => {
        settled();
        this._subAnswered(sub, since, answer);
      },
      (err) => {
        settled();
        this._subFailed(sub, conn, err);
      },
    );
  }

  _subAnswered(sub, since, answer) {
    if (this._subs.get(sub.topic) !== sub) return; // unsubscribed or replaced meanwhile
    sub._retries = 0;
    // recovered: the events after `since` follow, and each moves the offset. Otherwise
    // nothing is replayed and the stream continues live from the answer's offset.
    if (answer.recovered !== true) {
      sub._offset = answer.offset;
      if (since !== undefined) this._reset(sub, answer.offset);
    }
    sub._snapshot(answer);
    sub._confirm(answer);
  }

  _subFailed(sub, conn, err) {
    if (this._subs.get(sub.topic) !== sub) return;
    if (err.code === STATUS.DISCONNECTED || err.code === STATUS.CLOSED) return; // next open resubscribes
    if (sub._settled && (err.retryable || err.code === STATUS.CLIENT_TIMEOUT)) {
      // A resubscribe the server could not serve now (bus down): try again on this socket.
      const delay = backoffDelay(sub._retries++, this._backoff, this._random);
      this._setTimeout(() => {
        if (this._subs.get(sub.topic) === sub && this._conn === conn && this._canSend()) {
          this._syncSub(sub, conn);
        }
      }, delay);
      return;
    }
    this._subs.delete(sub.topic);
    if (sub._settled) this._emit("error", err); // ready already resolved: tell someone
    sub._end(err);
  }

  async _unsubscribe(sub) {
    if (!sub._active) return;
    sub._end(clientError(STATUS.ABORTED, "unsubscribed"));
    if (this._subs.get(sub.topic) !== sub) return;
    this._subs.delete(sub.topic); // delivery stops here, and nothing resubscribes it
    const conn = this._conn;
    // No subscription on the current socket: it died with the socket it was made on.
    if (conn === null || !conn.authed || sub._conn !== conn) return;
    await sub._syncing; // requests run concurrently: unsubscribing first could lose the race
    if (conn.done || this._subs.has(sub.topic)) return; // a newer subscribe took the topic
    await new Promise((resolve, reject) => {
      this._request(conn, "topics.unsubscribe", { topic: sub.topic }, () => resolve(), (err) => {
        if (err.code === STATUS.DISCONNECTED || err.code === STATUS.CLOSED) resolve();
        else reject(err);
      });
    });
  }

  _syncWatch(watch, conn) {
    const data =
      watch.offset === undefined
        ? { job_id: watch.jobId }
        : { job_id: watch.jobId, since: watch.offset };
    watch.target = undefined;
    this._request(
      conn,
      "jobs.watch",
      data,
      (answer) => {
        watch.answered = true;
        watch.retries = 0;
        watch.target = answer?.offset;
        this._releaseDone(watch);
      },
      (err) => this._watchFailed(watch, conn, err),
    );
  }

  /**
   * Nothing more of the job's topic will be replayed on this socket: the replay reached
   * the watch answer's offset, or there is none (a new epoch, or an empty topic).
   */
  _caughtUp(watch) {
    const target = watch.target;
    if (typeof target !== "string") return false;
    if (watch.offset === target) return true;
    const [epoch, seq] = target.split(":");
    if (watch.offset === undefined) return seq === "0";
    return watch.offset.split(":")[0] !== epoch;
  }

  /** A held job.done resolves the watch once its own replay is over (see _onJobEvent). */
  _releaseDone(watch) {
    if (watch.heldDone === undefined || !this._caughtUp(watch)) return;
    this._finishWatch(watch, watch.heldDone);
  }

  _finishWatch(watch, data) {
    this._watches.delete(watch.jobId);
    for (const l of watch.listeners) l.resolve(data);
  }

  _watchFailed(watch, conn, err) {
    if (this._watches.get(watch.jobId) !== watch) return;
    if (err.code === STATUS.DISCONNECTED || err.code === STATUS.CLOSED) return;
    // The job is known to be over: that is the answer, whatever the watch could not do.
    if (watch.heldDone !== undefined) return this._finishWatch(watch, watch.heldDone);
    if (watch.answered && (err.retryable || err.code === STATUS.CLIENT_TIMEOUT)) {
      const delay = backoffDelay(watch.retries++, this._backoff, this._random);
      this._setTimeout(() => {
        if (this._watches.get(watch.jobId) === watch && this._conn === conn && this._canSend()) {
          this._syncWatch(watch, conn);
        }
      }, delay);
      return;
    }
    this._watches.delete(watch.jobId);
    for (const l of watch.listeners) l.reject(err);
  }

  _onJobEvent(msg) {
    const data = msg.data ?? {};
    const fromTopic = msg.topic?.startsWith("job:") ? msg.topic.slice(4) : undefined;
    const watch = this._watches.get(data.job_id ?? fromTopic);
    if (!watch) return;
    if (fromTopic === undefined) return this._onOwnerDone(watch, msg);
    if (msg.offset !== undefined) watch.offset = msg.offset;
    if (msg.event === "job.done") return this._finishWatch(watch, data);
    // The re-watch resumes after the last offset, so no step should come twice; this
    // guards against a replay that overlaps anyway (belt and braces).
    const step = typeof data.step === "number" ? data.step : undefined;
    const repeated = step !== undefined && watch.lastStep !== undefined && step <= watch.lastStep;
    if (!repeated) {
      if (step !== undefined) watch.lastStep = step;
      for (const l of watch.listeners) {
        if (l.onProgress) this._safe(() => l.onProgress(data));
      }
    }
    this._releaseDone(watch);
  }

  /**
   * A job.done from the owner's personal channel (the server sends it there only to a
   * socket that does not watch the job yet, e.g. in the replay at a reconnect, before
   * the re-watch). Resolving at once would skip the progress the re-watch is about to
   * replay, so it waits until that replay is over; its own job.done usually comes first.
   */
  _onOwnerDone(watch, msg) {
    if (msg.event !== "job.done") return;
    watch.heldDone = msg.data;
    this._releaseDone(watch);
  }

  // -- handlers ------------------------------------------------------------------------

  _handlerSet(event) {
    const set = this._handlers[event];
    if (!set) throw new TypeError(`unknown event ${event}: use "state", "event" or "error"`);
    return set;
  }

  _emit(event, value) {
    for (const handler of [...this._handlers[event]]) this._safe(() => handler(value), event);
  }

  /** Runs application code; what it throws goes to the "error" handlers, never up the socket. */
  _safe(fn, event) {
    try {
      fn();
    } catch (err) {
      if (event !== "error") this._emit("error", err);
      else globalThis.reportError?.(err); // an error handler failed: the page's console
    }
  }
}

/** Opens a client; it connects at once and keeps reconnecting until close(). */
export function connect(url, options) {
  return new RealtimeClient(url, options);
}

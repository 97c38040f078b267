// Logic tests of realtime/static/realtime.js: a fake WebSocket, a fake clock and a fixed
// random, no network. Run with `node --test tests/js/`.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as realtime from "../../realtime/static/realtime.js";
import {
  CLOSE_ACTIONS,
  PendingQueue,
  RealtimeError,
  STATUS,
  STATUS_NAMES,
  backoffDelay,
  closeAction,
  connect,
} from "../../realtime/static/realtime.js";

const CATALOG = [
  { pkg_id: 40, name: "echo", paginated: false },
  { pkg_id: 11, name: "projects.list", paginated: true },
  { pkg_id: 12, name: "projects.get", paginated: false },
  { pkg_id: 20, name: "jobs.start", paginated: false },
  { pkg_id: 23, name: "jobs.watch", paginated: false },
  { pkg_id: 30, name: "topics.subscribe", paginated: false },
  { pkg_id: 31, name: "topics.unsubscribe", paginated: false },
  { pkg_id: 33, name: "topics.presence", paginated: false },
  { pkg_id: 42, name: "auth.refresh", paginated: false },
];
const ID = Object.fromEntries(CATALOG.map((p) => [p.name, p.pkg_id]));

/** Lets every pending promise continuation run. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** setTimeout/clearTimeout on a virtual clock that only moves in advance(). */
function fakeClock() {
  let now = 0;
  let nextId = 1;
  const timers = new Map();
  return {
    setTimeout: (fn, ms = 0) => {
      const id = nextId++;
      timers.set(id, { at: now + Math.max(0, ms), fn });
      return id;
    },
    clearTimeout: (id) => void timers.delete(id),
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        let due = null;
        for (const [id, t] of timers) if (t.at <= end && (!due || t.at < due[1].at)) due = [id, t];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
        await flush();
      }
      now = end;
      await flush();
    },
  };
}

/** A client on a fake socket class that records frames and lets the test play the server. */
function harness({ token = "tok", fetch, ...options } = {}) {
  const clock = fakeClock();
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.sent = [];
      this.closed = null;
      sockets.push(this);
    }

    send(text) {
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closed = { code, reason };
    }

    open() {
      this.onopen?.({});
    }

    receive(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }

    drop(code, reason = "") {
      this.onclose?.({ code, reason });
    }

    framesOf(name) {
      return this.sent.filter((f) => f.pkg_id === ID[name]);
    }

    answer(frame, data, extra = {}) {
      this.receive({ pkg_id: frame.pkg_id, req_id: frame.req_id, status_code: 0, data, ...extra });
    }

    fail(frame, status_code, message, details) {
      const error = details === undefined ? { message } : { message, details };
      this.receive({ pkg_id: frame.pkg_id, req_id: frame.req_id, status_code, error });
    }
  }
  const fetches = [];
  const catalogFetch =
    fetch ??
    (async (url) => {
      fetches.push(url);
      return { ok: true, status: 200, json: async () => CATALOG };
    });
  const client = connect("ws://host:8000/ws", {
    token,
    WebSocket: FakeWebSocket,
    fetch: catalogFetch,
    random: () => 0.5,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    ...options,
  });
  const states = [];
  const errors = [];
  client.on("state", (s) => states.push(s));
  client.on("error", (e) => errors.push(e));
  const last = () => sockets.at(-1);
  /** Lets the client create its next socket, opens it and answers the first-frame auth. */
  async function open() {
    await flush();
    const ws = last();
    ws.open();
    if ((options.auth ?? "frame") === "frame") {
      const [auth] = ws.sent;
      assert.equal(auth.pkg_id, ID["auth.refresh"]);
      ws.answer(auth, { sub: "u1", expires_at: 2e9 });
    }
    assert.equal(client.state, "open");
    return ws;
  }
  return { client, sockets, clock, fetches, states, errors, last, open };
}

/** A promise's outcome without an unhandled rejection: the error, or {value}. */
const settle = (p) => p.then((value) => ({ value }), (err) => err);

// -- pure helpers ----------------------------------------------------------------------

test("backoffDelay stays within [0, min(max, base * 2**attempt)] with full jitter", () => {
  const backoff = { base: 500, max: 15000 };
  for (let attempt = 0; attempt < 40; attempt++) {
    for (const r of [0, 0.1, 0.5, 0.999]) {
      const d = backoffDelay(attempt, backoff, () => r);
      assert.ok(d >= 0 && d <= Math.min(15000, 500 * 2 ** attempt), `${attempt} ${r}: ${d}`);
    }
  }
  assert.notEqual(backoffDelay(3, backoff, () => 0.1), backoffDelay(3, backoff, () => 0.7));
  assert.equal(backoffDelay(0, backoff, () => 0), 0);
  assert.equal(backoffDelay(2, backoff, () => 0.5), 1000);
  assert.ok(backoffDelay(10, backoff, () => 0.999) >= 14980, "near the cap");
  assert.equal(backoffDelay(5000, backoff, () => 0.5), 7500, "huge attempts stay at the cap");
  assert.equal(backoffDelay(1, {}, () => 0.5), 500, "defaults base 500");
});

test("close codes: reconnect or terminal", () => {
  for (const code of [1000, 1001, 1006, 1011, 1012, 1013, 4409, 4429, 4000, 1005]) {
    assert.equal(closeAction(code), "reconnect", String(code));
  }
  for (const code of [4401, 4403, 4410, 1008, 1003, 1009]) {
    assert.equal(closeAction(code), "terminal", String(code));
    assert.equal(CLOSE_ACTIONS[code], "terminal");
  }
});

test("RealtimeError carries code, status, details and retryability", () => {
  const e = new RealtimeError(5, "slow down", { details: { retry_after: 3 }, reqId: "7" });
  assert.ok(e instanceof Error);
  assert.equal(e.name, "RealtimeError");
  assert.deepEqual([e.code, e.status, e.message, e.reqId], [5, "RATE_LIMITED", "slow down", "7"]);
  assert.equal(e.retryable, true);
  assert.equal(e.retryAfter, 3);
  const retryable = Object.values(STATUS).filter((c) => new RealtimeError(c, "").retryable);
  assert.deepEqual(retryable.sort(), [-1, 5, 7, 9].sort());
  assert.equal(new RealtimeError(2, "bad", { details: [{ path: "/", reason: "x" }] }).retryAfter, undefined);
  assert.equal(STATUS_NAMES[4], "NOT_FOUND");
  assert.equal(STATUS_NAMES[-4], "QUEUE_FULL");
  assert.equal(STATUS.CLOSED, -5);
});

test("PendingQueue is bounded and FIFO", () => {
  const q = new PendingQueue(2);
  assert.ok(q.push("a") && q.push("b"));
  assert.equal(q.push("c"), false);
  assert.ok(q.remove("a"));
  assert.ok(q.push("c"));
  assert.deepEqual([q.shift(), q.shift(), q.size], ["b", "c", 0]);
});

test("realtime.d.ts declares exactly the module's exports", () => {
  const dts = readFileSync(new URL("../../realtime/static/realtime.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(realtime).sort());
});

// -- catalog and authentication --------------------------------------------------------

test("the catalog URL derives from the socket URL and is fetched once", async () => {
  const h = harness();
  const ws = await h.open();
  assert.deepEqual(h.fetches, ["http://host:8000/packages"]);
  ws.drop(1012);
  await h.clock.advance(1000);
  await h.open();
  assert.equal(h.fetches.length, 1, "cached across reconnects");

  const urls = [];
  const fetch = async (url) => {
    urls.push(url);
    return { ok: true, status: 200, json: async () => CATALOG };
  };
  const tls = connect("wss://example.org:8443/ws/x?y=1", { token: "t", fetch, WebSocket: class {} });
  await flush();
  assert.deepEqual(urls, ["https://example.org:8443/packages"]);
  tls.close();

  const given = harness({ packages: { echo: 40 } });
  await given.open();
  assert.deepEqual(given.fetches, [], "a packages map replaces the catalog");
  const p = given.client.call("echo", { a: 1 });
  assert.deepEqual(given.last().sent.at(-1), { pkg_id: 40, req_id: given.last().sent.at(-1).req_id, data: { a: 1 } });
  given.last().answer(given.last().sent.at(-1), { a: 1 });
  assert.deepEqual(await p, { a: 1 });
});

test("a failing catalog: the socket opens on built-in ids, calls wait for the real one", async () => {
  let calls = 0;
  const fetch = async () => {
    calls += 1;
    if (calls <= 2) throw new Error("Failed to fetch");
    return { ok: true, status: 200, json: async () => CATALOG };
  };
  const h = harness({ fetch });
  const early = h.client.call("echo", { n: 1 });
  await flush();
  assert.equal(h.errors[0].code, STATUS.UNAVAILABLE);
  // the socket opens anyway and authenticates with auth.refresh's built-in id
  const first = h.last();
  first.open();
  first.answer(first.sent[0], { sub: "u1", expires_at: 2e9 });
  await flush();
  // the catalog is fetched again; still failing: that socket is given up, with backoff
  assert.equal(calls, 2);
  assert.equal(first.sent.length, 1, "nothing but auth.refresh went out");
  assert.equal(h.states.at(-1).state, "reconnecting");
  await h.clock.advance(h.states.at(-1).delay);
  const second = h.last();
  assert.notEqual(second, first);
  second.open();
  second.answer(second.sent[0], { sub: "u1", expires_at: 2e9 });
  await flush();
  assert.equal(calls, 3);
  assert.equal(h.client.state, "open");
  const [echo] = second.framesOf("echo");
  second.answer(echo, { n: 1 });
  assert.deepEqual(await early, { n: 1 });
});

test("a page whose origin is refused learns it: catalog blocked, then 4403 and closed", async () => {
  const fetch = async () => {
    throw new TypeError("Failed to fetch"); // what a CORS refusal looks like to a page
  };
  const h = harness({ fetch });
  const waiting = settle(h.client.call("me", {}));
  await flush();
  h.last().open();
  h.last().drop(4403, "origin not allowed");
  await flush();
  assert.equal(h.client.state, "closed");
  assert.deepEqual([h.states.at(-1).code, h.states.at(-1).reason], [4403, "origin not allowed"]);
  assert.equal((await waiting).code, STATUS.CLOSED);
  assert.equal(h.sockets.length, 1, "no reconnect");
});

test("first-frame auth: the token rides only in the first frame, calls wait for its answer", async () => {
  const h = harness({ token: "secret-jwt" });
  const early = h.client.call("echo", { n: 1 });
  await flush();
  const ws = h.last();
  assert.equal(ws.url, "ws://host:8000/ws");
  assert.equal(ws.protocols, undefined);
  ws.open();
  assert.equal(ws.sent.length, 1);
  assert.deepEqual(ws.sent[0], { pkg_id: 42, req_id: ws.sent[0].req_id, data: { token: "secret-jwt" } });
  const late = h.client.call("echo", { n: 2 });
  assert.equal(ws.sent.length, 1, "nothing before the auth answer");
  assert.equal(h.client.state, "connecting");
  ws.answer(ws.sent[0], { sub: "u1", expires_at: 2e9 });
  assert.equal(h.client.state, "open");
  assert.deepEqual(ws.sent.slice(1).map((f) => f.data), [{ n: 1 }, { n: 2 }], "queued in order");
  ws.answer(ws.sent[1], { n: 1 });
  ws.answer(ws.sent[2], { n: 2 });
  assert.deepEqual([await early, await late], [{ n: 1 }, { n: 2 }]);
});

test("subprotocol auth offers realtime.v1 and bearer.<token>, first frame is the call", async () => {
  const h = harness({ auth: "subprotocol" });
  const p = h.client.call("echo", { x: 1 });
  await flush();
  const ws = h.last();
  assert.deepEqual(ws.protocols, ["realtime.v1", "bearer.tok"]);
  assert.equal(ws.url, "ws://host:8000/ws");
  ws.open();
  assert.equal(h.client.state, "open");
  assert.equal(ws.sent[0].pkg_id, ID.echo);
  ws.answer(ws.sent[0], { x: 1 });
  assert.deepEqual(await p, { x: 1 });
});

test("a socket constructor error never leaks the token", async () => {
  class Refusing {
    constructor(url, protocols) {
      throw new SyntaxError(`The subprotocol '${protocols[1]}' is invalid`);
    }
  }
  const h = harness({ auth: "subprotocol", token: "secret-jwt", WebSocket: Refusing });
  await flush();
  assert.equal(h.states[0].state, "reconnecting");
  for (const e of h.errors) assert.ok(!e.message.includes("secret-jwt"), e.message);
  for (const s of h.states) assert.ok(!s.reason.includes("secret-jwt"));
});

// -- calls -----------------------------------------------------------------------------

test("answers match their calls by req_id, in any order", async () => {
  const h = harness();
  const ws = await h.open();
  const calls = [1, 2, 3].map((n) => h.client.call("echo", { n }));
  const frames = ws.sent.slice(1);
  assert.equal(new Set(frames.map((f) => f.req_id)).size, 3);
  for (const f of frames.reverse()) ws.answer(f, { echoed: f.data.n });
  assert.deepEqual(await Promise.all(calls), [{ echoed: 1 }, { echoed: 2 }, { echoed: 3 }]);
});

test("a paginated package resolves {data, meta}, others their data", async () => {
  const h = harness();
  const ws = await h.open();
  const page = h.client.call("projects.list", { page: 1 });
  const one = h.client.call("projects.get", { id: 3 });
  const meta = { page: 1, per_page: 20, total: 1, pages: 1 };
  ws.answer(ws.sent[1], [{ id: 3 }], { meta });
  ws.answer(ws.sent[2], { id: 3 });
  assert.deepEqual(await page, { data: [{ id: 3 }], meta });
  assert.deepEqual(await one, { id: 3 });
});

test("an error answer rejects with code, status, message, details, reqId", async () => {
  const h = harness();
  const ws = await h.open();
  const missing = settle(h.client.call("projects.get", { id: 9 }));
  const limited = settle(h.client.call("echo", {}));
  ws.fail(ws.sent[1], 4, "project not found");
  ws.fail(ws.sent[2], 5, "rate limited", { retry_after: 2 });
  const e = await missing;
  assert.ok(e instanceof RealtimeError);
  assert.deepEqual([e.code, e.status, e.message, e.reqId, e.retryable], [4, "NOT_FOUND", "project not found", ws.sent[1].req_id, false]);
  const r = await limited;
  assert.deepEqual([r.code, r.status, r.retryable, r.retryAfter, r.details], [5, "RATE_LIMITED", true, 2, { retry_after: 2 }]);
});

test("an unknown package name rejects with UNKNOWN_PACKAGE and sends nothing", async () => {
  const h = harness();
  const ws = await h.open();
  const e = await settle(h.client.call("no.such.package", {}));
  assert.deepEqual([e.code, e.status], [6, "UNKNOWN_PACKAGE"]);
  assert.equal(ws.sent.length, 1);
});

test("waiting calls are bounded by maxPending and time out without being sent", async () => {
  const h = harness({ callTimeout: 10000 });
  const waiting = Array.from({ length: 100 }, (_, n) => settle(h.client.call("echo", { n })));
  const over = await settle(h.client.call("echo", { n: 100 }));
  assert.deepEqual([over.code, over.status], [-4, "QUEUE_FULL"]);
  await h.clock.advance(9999);
  assert.equal(h.last().sent.length, 0);
  await h.clock.advance(1);
  for (const e of await Promise.all(waiting)) {
    assert.deepEqual([e.code, e.status, e.reqId], [-2, "CLIENT_TIMEOUT", null]);
  }
  const ws = h.last();
  ws.open();
  ws.answer(ws.sent[0], { sub: "u1", expires_at: 2e9 });
  assert.deepEqual(ws.sent.map((f) => f.pkg_id), [42], "timed-out calls are never sent");
});

test("a queued call times out from the call, not from the send", async () => {
  const h = harness({ callTimeout: 1000 });
  const p = settle(h.client.call("echo", {}));
  await flush();
  await h.clock.advance(600);
  const ws = await h.open();
  assert.equal(ws.sent.length, 2);
  await h.clock.advance(400);
  assert.equal((await p).code, STATUS.CLIENT_TIMEOUT);
  ws.answer(ws.sent[1], {}); // a late answer is ignored
  assert.deepEqual(h.errors, []);
});

test("an AbortSignal aborts a queued or in-flight call", async () => {
  const h = harness();
  const queued = new AbortController();
  const p1 = settle(h.client.call("echo", { n: 1 }, { signal: queued.signal }));
  queued.abort();
  assert.equal((await p1).code, STATUS.ABORTED);
  const ws = await h.open();
  assert.equal(ws.sent.length, 1, "the aborted call is not sent");
  const flying = new AbortController();
  const p2 = settle(h.client.call("echo", { n: 2 }, { signal: flying.signal }));
  flying.abort();
  const e = await p2;
  assert.deepEqual([e.code, e.status, e.reqId], [-3, "ABORTED", ws.sent[1].req_id]);
  const gone = await settle(h.client.call("echo", {}, { signal: flying.signal }));
  assert.equal(gone.code, STATUS.ABORTED);
});

// -- reconnects ------------------------------------------------------------------------

test("a drop rejects in-flight calls DISCONNECTED, never resends them, sends queued ones once", async () => {
  const h = harness();
  const ws1 = await h.open();
  const flying = settle(h.client.call("echo", { n: 1 }));
  ws1.drop(1006);
  const e = await flying;
  assert.deepEqual([e.code, e.status, e.retryable], [-1, "DISCONNECTED", true]);
  assert.deepEqual(h.states.at(-1), { state: "reconnecting", code: 1006, reason: "", attempt: 0, delay: 250 });
  const queued = h.client.call("echo", { n: 2 });
  await h.clock.advance(250);
  const ws2 = await h.open();
  assert.deepEqual(ws2.sent.slice(1).map((f) => f.data), [{ n: 2 }]);
  ws1.receive({ pkg_id: 40, req_id: ws2.sent[1].req_id, status_code: 0, data: "stale" });
  ws2.answer(ws2.sent[1], { n: 2 });
  assert.deepEqual(await queued, { n: 2 });
  ws2.drop(1001);
  await h.clock.advance(15000);
  const ws3 = await h.open();
  assert.deepEqual(ws3.sent.map((f) => f.pkg_id), [42], "nothing sent twice");
});

test("failed attempts back off exponentially; a successful open resets the attempt", async () => {
  const h = harness();
  await flush();
  h.last().drop(1006); // never opened
  h.last().drop(1006); // a late duplicate close is ignored
  await h.clock.advance(250);
  h.last().drop(1006);
  await h.clock.advance(500);
  h.last().drop(1006);
  const delays = h.states.filter((s) => s.state === "reconnecting").map((s) => [s.attempt, s.delay]);
  assert.deepEqual(delays, [[0, 250], [1, 500], [2, 1000]]);
  await h.clock.advance(1000);
  const ws = await h.open();
  ws.drop(1011);
  assert.deepEqual([h.states.at(-1).attempt, h.states.at(-1).delay], [0, 250]);
  assert.equal(h.sockets.length, 4);
});

test("an unrequested 1000 reconnects; 4429 reconnects after a longer backoff", async () => {
  const h = harness();
  const ws = await h.open();
  ws.drop(1000);
  assert.deepEqual([h.states.at(-1).state, h.states.at(-1).delay], ["reconnecting", 250]);
  await h.clock.advance(250);
  const ws2 = await h.open();
  ws2.drop(4429, "rate limited");
  assert.deepEqual([h.states.at(-1).state, h.states.at(-1).attempt, h.states.at(-1).delay], ["reconnecting", 3, 2000]);
  await h.clock.advance(1999);
  assert.equal(h.sockets.length, 2);
  await h.clock.advance(1);
  assert.equal(h.sockets.length, 3);
});

test("ready() resolves on open, at once when open, rejects when closed", async () => {
  const h = harness();
  let resolved = false;
  const ready = h.client.ready().then(() => (resolved = true));
  await flush();
  assert.equal(resolved, false);
  await h.open();
  await ready;
  await h.client.ready();
  h.client.close();
  assert.equal((await settle(h.client.ready())).code, STATUS.CLOSED);
});

// -- terminal closes and tokens --------------------------------------------------------

test("4401 with a token provider: one retry with a fresh token, then closed", async () => {
  const reasons = [];
  let n = 0;
  const token = async ({ reason }) => {
    reasons.push(reason);
    return `t${++n}`;
  };
  const h = harness({ token });
  const ws1 = await h.open();
  assert.deepEqual(ws1.sent[0].data, { token: "t1" });
  ws1.drop(4401, "token expired");
  assert.deepEqual(h.states.at(-1), { state: "reconnecting", code: 4401, reason: "token expired", attempt: 0, delay: 0 });
  await flush();
  const ws2 = h.last();
  assert.notEqual(ws2, ws1, "reconnected at once");
  ws2.open();
  assert.deepEqual(ws2.sent[0].data, { token: "t2" });
  const queued = settle(h.client.call("echo", {}));
  ws2.drop(4401, "invalid signature");
  assert.deepEqual(h.states.at(-1), { state: "closed", code: 4401, reason: "invalid signature", attempt: 0, delay: 0 });
  assert.equal((await queued).code, STATUS.CLOSED);
  assert.deepEqual(reasons, ["connect", "rejected"]);
  await h.clock.advance(60000);
  assert.equal(h.sockets.length, 2);
  assert.equal((await settle(h.client.call("echo", {}))).code, STATUS.CLOSED);
});

test("the fresh-token retry is allowed again after a successful open", async () => {
  let n = 0;
  const h = harness({ token: () => `t${++n}` });
  (await h.open()).drop(4401);
  await flush();
  (await h.open()).drop(4401); // this one authenticated first: it earns a new retry
  assert.equal(h.states.at(-1).state, "reconnecting");
  await flush();
  h.last().open();
  h.last().drop(4401);
  assert.equal(h.states.at(-1).state, "closed");
  assert.equal(n, 3);
});

test("a terminal close with a fixed token stops at once", async () => {
  for (const code of [4401, 4403, 1008]) {
    const h = harness();
    const ws = await h.open();
    const flying = settle(h.client.call("echo", {}));
    ws.drop(code, "no");
    assert.deepEqual([h.client.state, h.states.at(-1).code], ["closed", code]);
    assert.equal((await flying).code, STATUS.DISCONNECTED);
    await h.clock.advance(60000);
    assert.equal(h.sockets.length, 1);
  }
});

test("auth.expiring calls the provider and sends auth.refresh on the open socket", async () => {
  const reasons = [];
  const token = async ({ reason }) => {
    reasons.push(reason);
    return `t${reasons.length}`;
  };
  const h = harness({ token });
  const ws = await h.open();
  ws.receive({ event: "auth.expiring", data: { expires_in: 30 } });
  await flush();
  assert.deepEqual(reasons, ["connect", "expiring"]);
  const [, refresh] = ws.framesOf("auth.refresh");
  assert.deepEqual(refresh.data, { token: "t2" });
  ws.answer(refresh, { sub: "u1", expires_at: 2e9 });
  ws.receive({ event: "auth.expiring", data: { expires_in: 30 } });
  await flush();
  ws.fail(ws.framesOf("auth.refresh")[2], 3, "token rejected: wrong issuer");
  await flush();
  assert.equal(h.errors.length, 1);
  assert.deepEqual([h.errors[0].code, h.errors[0].message], [3, "token rejected: wrong issuer"]);
  assert.equal(h.client.state, "open");

  const fixed = harness();
  const ws2 = await fixed.open();
  ws2.receive({ event: "auth.expiring", data: { expires_in: 30 } });
  await flush();
  assert.equal(ws2.sent.length, 1, "a fixed token has nothing to refresh");
});

// -- draining --------------------------------------------------------------------------

test("server.draining: queue new calls, wait for in-flight ones, close 1000, reconnect at once", async () => {
  const h = harness();
  const ws1 = await h.open();
  const sub = h.client.subscribe("broadcast", () => {});
  ws1.answer(ws1.framesOf("topics.subscribe")[0], { topic: "broadcast", offset: "e:4", recovered: false });
  const flying = h.client.call("echo", { n: 1 });
  ws1.receive({ event: "server.draining", data: {} });
  const later = h.client.call("echo", { n: 2 });
  assert.equal(ws1.framesOf("echo").length, 1, "no new call on a draining socket");
  assert.equal(ws1.closed, null, "waits for the in-flight call");
  ws1.answer(ws1.framesOf("echo")[0], { n: 1 });
  assert.deepEqual(await flying, { n: 1 });
  assert.deepEqual(ws1.closed, { code: 1000, reason: undefined });
  assert.deepEqual([h.states.at(-1).state, h.states.at(-1).delay], ["reconnecting", 0]);
  const ws2 = await h.open(); // no clock advance: no backoff
  assert.deepEqual(ws2.framesOf("topics.subscribe")[0].data, { topic: "broadcast", since: "e:4" });
  assert.deepEqual(ws2.framesOf("echo").map((f) => f.data), [{ n: 2 }]);
  ws2.answer(ws2.framesOf("echo")[0], { n: 2 });
  assert.deepEqual(await later, { n: 2 });
  assert.equal(sub.active, true);
});

test("a drain with nothing in flight moves at once", async () => {
  const h = harness();
  const ws1 = await h.open();
  ws1.receive({ event: "server.draining", data: {} });
  assert.equal(ws1.closed.code, 1000);
  await flush();
  assert.equal(h.sockets.length, 2);
  ws1.drop(1001); // the old socket's late close changes nothing
  assert.deepEqual(h.states.map((s) => s.state), ["open", "reconnecting"]);
});

test("a drain waits at most 2 s for in-flight calls", async () => {
  const h = harness({ callTimeout: 60000 });
  const ws1 = await h.open();
  const stuck = settle(h.client.call("echo", {}));
  ws1.receive({ event: "server.draining", data: {} });
  await h.clock.advance(1999);
  assert.equal(ws1.closed, null);
  await h.clock.advance(1);
  assert.equal(ws1.closed.code, 1000);
  assert.equal((await stuck).code, STATUS.DISCONNECTED);
  await flush();
  assert.equal(h.sockets.length, 2);
});

// -- subscriptions ---------------------------------------------------------------------

test("messages reach the handler; a reconnect resubscribes from the last delivered offset", async () => {
  const h = harness();
  const ws1 = await h.open();
  const got = [];
  const resets = [];
  const sub = h.client.subscribe("broadcast", (data, info) => got.push([data, info]), {
    onReset: (r) => resets.push(r),
  });
  const [first] = ws1.framesOf("topics.subscribe");
  assert.deepEqual(first.data, { topic: "broadcast" });
  ws1.answer(first, { topic: "broadcast", offset: "e:5", recovered: false });
  assert.deepEqual(await sub.ready, { topic: "broadcast", offset: "e:5", recovered: false });
  assert.deepEqual(resets, [], "no since sent: nothing to reset");
  ws1.receive({ event: "message", topic: "broadcast", offset: "e:6", data: { a: 1 } });
  ws1.receive({ event: "message", topic: "broadcast", offset: "e:7", data: { a: 2 } });
  ws1.receive({ event: "message", topic: "elsewhere", offset: "e:1", data: {} });
  assert.deepEqual(got, [
    [{ a: 1 }, { topic: "broadcast", offset: "e:6" }],
    [{ a: 2 }, { topic: "broadcast", offset: "e:7" }],
  ]);
  assert.equal(sub.offset, "e:7");
  ws1.drop(1012);
  await h.clock.advance(250);
  const ws2 = await h.open();
  const [again] = ws2.framesOf("topics.subscribe");
  assert.deepEqual(again.data, { topic: "broadcast", since: "e:7" });
  assert.ok(ws2.sent.indexOf(again) === 1, "resubscribed right after auth");
  // the answer and the replay can come in one turn: the replayed offset must win
  ws2.answer(again, { topic: "broadcast", offset: "e:8", recovered: true });
  ws2.receive({ event: "message", topic: "broadcast", offset: "e:8", data: { a: 3 } });
  assert.equal(sub.offset, "e:8");
  assert.deepEqual(resets, []);
  ws2.drop(1006);
  await h.clock.advance(250);
  const ws3 = await h.open();
  assert.deepEqual(ws3.framesOf("topics.subscribe")[0].data, { topic: "broadcast", since: "e:8" });
});

test("the server's own subscriptions resume at the next connect from their last offset", async () => {
  const h = harness();
  const ws1 = await h.open();
  assert.equal(ws1.url, "ws://host:8000/ws", "nothing to resume yet");
  const events = [];
  h.client.on("event", (e) => events.push(e));
  const personal = { event: "job.done", topic: "user.acme.u1", offset: "e:3", data: { job_id: "j" } };
  ws1.receive(personal);
  ws1.receive({ ...personal, offset: "e:4" });
  ws1.receive({ event: "job.progress", topic: "job:j", offset: "x:1", data: { job_id: "j" } });
  ws1.receive({ event: "message", topic: "projects.acme", offset: "p:9", data: {} });
  assert.deepEqual(events.map((e) => e.offset), ["e:3", "e:4", "x:1", "p:9"]);
  ws1.drop(1006);
  await h.clock.advance(250);
  const ws2 = await h.open();
  const query = new URL(ws2.url).searchParams;
  assert.equal(query.get("since.user.acme.u1"), "e:4");
  assert.equal(query.get("since.projects.acme"), "p:9");
  assert.equal(query.get("since.job:j"), null, "a job's topic is the watch's to resume");
});

test("a quiet server-side subscription resumes from topics.channels' offset", async () => {
  const catalog = [...CATALOG, { pkg_id: 35, name: "topics.channels", paginated: false }];
  const fetch = async () => ({ ok: true, status: 200, json: async () => catalog });
  const h = harness({ fetch });
  const ws1 = await h.open();
  const [ask] = ws1.sent.filter((f) => f.pkg_id === 35);
  assert.ok(ask, "asked where the server's own subscriptions stand");
  assert.equal(ws1.sent.indexOf(ask), 1, "right after the auth, before queued calls");
  h.client.subscribe("mine", () => {});
  ws1.answer(ask, {
    channels: [
      { topic: "user.acme.u1", offset: "e:7" },
      { topic: "projects.acme", offset: "p:2" },
      { topic: "mine", offset: "m:1" }, // not the server's: the subscription resumes it
    ],
  });
  // an event after the answer is newer than the answer's offset
  ws1.receive({ event: "message", topic: "projects.acme", offset: "p:3", data: {} });
  ws1.drop(1006);
  await h.clock.advance(250);
  const ws2 = await h.open();
  const query = new URL(ws2.url).searchParams;
  assert.equal(query.get("since.user.acme.u1"), "e:7", "quiet, yet resumed");
  assert.equal(query.get("since.projects.acme"), "p:3");
  assert.equal(query.get("since.mine"), null);
  // a server restarted on another epoch: the new answer replaces the old offset
  ws2.answer(ws2.sent.filter((f) => f.pkg_id === 35)[0], {
    channels: [{ topic: "user.acme.u1", offset: "f:0" }],
  });
  ws2.drop(1012);
  await h.clock.advance(250);
  const ws3 = await h.open();
  assert.equal(new URL(ws3.url).searchParams.get("since.user.acme.u1"), "f:0");
  assert.deepEqual(h.errors, []);
});

test("a refused topics.channels is reported and the socket stays open", async () => {
  const catalog = [...CATALOG, { pkg_id: 35, name: "topics.channels", paginated: false }];
  const fetch = async () => ({ ok: true, status: 200, json: async () => catalog });
  const h = harness({ fetch });
  const ws = await h.open();
  ws.fail(ws.sent.filter((f) => f.pkg_id === 35)[0], 3, "you may not call topics.channels");
  await flush();
  assert.deepEqual(h.errors.map((e) => e.code), [3]);
  assert.equal(h.client.state, "open");
  assert.equal(new URL(ws.url).search, "");
});

test("with nothing delivered, the resubscribe uses the answer's offset", async () => {
  const h = harness();
  const ws1 = await h.open();
  h.client.subscribe("quiet", () => {});
  ws1.answer(ws1.framesOf("topics.subscribe")[0], { topic: "quiet", offset: "e:9", recovered: false });
  ws1.drop(1011);
  await h.clock.advance(250);
  const ws2 = await h.open();
  assert.deepEqual(ws2.framesOf("topics.subscribe")[0].data, { topic: "quiet", since: "e:9" });
});

test("recovered:false after a since, or subscription.recovered false, calls onReset", async () => {
  const h = harness();
  const ws1 = await h.open();
  const resets = [];
  const sub = h.client.subscribe("broadcast", () => {}, { since: "e:3", onReset: (r) => resets.push(r) });
  const [frame] = ws1.framesOf("topics.subscribe");
  assert.deepEqual(frame.data, { topic: "broadcast", since: "e:3" });
  ws1.answer(frame, { topic: "broadcast", offset: "f:0", recovered: false });
  assert.deepEqual(resets, [{ topic: "broadcast", offset: "f:0", reason: "not recovered" }]);
  assert.equal(sub.offset, "f:0");
  ws1.receive({ event: "subscription.recovered", topic: "broadcast", data: { recovered: true, offset: "f:0" } });
  assert.equal(resets.length, 1);
  ws1.receive({ event: "subscription.recovered", topic: "broadcast", data: { recovered: false, offset: "g:0" } });
  assert.deepEqual(resets[1], { topic: "broadcast", offset: "g:0", reason: "not recovered" });
  assert.equal(sub.offset, "g:0");
});

test("unsubscribe stops delivery at once and is not resubscribed", async () => {
  const h = harness();
  const ws1 = await h.open();
  const got = [];
  const sub = h.client.subscribe("broadcast", (d) => got.push(d));
  ws1.answer(ws1.framesOf("topics.subscribe")[0], { topic: "broadcast", offset: "e:1", recovered: false });
  const done = sub.unsubscribe();
  ws1.receive({ event: "message", topic: "broadcast", offset: "e:2", data: 1 });
  assert.deepEqual(got, []);
  await flush();
  const [unsub] = ws1.framesOf("topics.unsubscribe");
  assert.deepEqual(unsub.data, { topic: "broadcast" });
  ws1.answer(unsub, { topic: "broadcast" });
  await done;
  assert.equal(sub.active, false);
  ws1.drop(1012);
  await h.clock.advance(250);
  const ws2 = await h.open();
  assert.deepEqual(ws2.framesOf("topics.subscribe"), []);
});

test("subscribing again to a topic replaces the handler", async () => {
  const h = harness();
  const ws = await h.open();
  const a = [];
  const b = [];
  const first = h.client.subscribe("t", (d) => a.push(d));
  const second = h.client.subscribe("t", (d) => b.push(d));
  assert.equal((await settle(first.ready)).code, STATUS.ABORTED);
  ws.receive({ event: "message", topic: "t", offset: "e:1", data: 1 });
  assert.deepEqual([a, b], [[], [1]]);
  await first.unsubscribe(); // the replaced one does not unsubscribe its successor
  assert.equal(second.active, true);
  assert.deepEqual(ws.framesOf("topics.unsubscribe"), []);
});

test("a refused subscribe rejects ready and is dropped", async () => {
  const h = harness();
  const ws = await h.open();
  const sub = h.client.subscribe("secret", () => {});
  ws.fail(ws.framesOf("topics.subscribe")[0], 3, "permission denied");
  assert.equal((await settle(sub.ready)).code, 3);
  assert.equal(sub.active, false);
  ws.drop(1012);
  await h.clock.advance(250);
  assert.deepEqual((await h.open()).framesOf("topics.subscribe"), []);
});

test("presence resolves the answer's presence list", async () => {
  const h = harness();
  const ws = await h.open();
  const sub = h.client.subscribe("broadcast", () => {});
  const p = sub.presence();
  const [frame] = ws.framesOf("topics.presence");
  assert.deepEqual(frame.data, { topic: "broadcast" });
  ws.answer(frame, { topic: "broadcast", presence: [{ sub: "u1", name: "Ann" }] });
  assert.deepEqual(await p, [{ sub: "u1", name: "Ann" }]);
});

test("onPresence: the snapshot, then joins and leaves, and a fresh snapshot after a reconnect", async () => {
  const h = harness();
  const ws1 = await h.open();
  const calls = [];
  const sub = h.client.subscribe("chat.7", () => {}, {
    onPresence: (members, change) => calls.push([members.map((m) => m.sub), change.kind, change.member?.sub]),
  });
  const [ask] = ws1.framesOf("topics.subscribe");
  assert.deepEqual(ask.data, { topic: "chat.7", presence: true });
  const bob = { sub: "bob", name: "Bob" };
  ws1.answer(ask, { topic: "chat.7", offset: "e:0", recovered: false, presence: [bob], presence_capped: false });
  ws1.receive({ event: "presence.join", topic: "chat.7", data: { sub: "amy", name: "Amy" } });
  ws1.receive({ event: "presence.join", topic: "other", data: { sub: "zed", name: "Zed" } });
  ws1.receive({ event: "presence.leave", topic: "chat.7", data: bob });
  assert.deepEqual(calls, [
    [["bob"], "snapshot", undefined],
    [["amy", "bob"], "join", "amy"],
    [["amy"], "leave", "bob"],
  ]);
  assert.deepEqual(sub.members, [{ sub: "amy", name: "Amy" }]);
  ws1.drop(1006);
  await h.clock.advance(250);
  const ws2 = await h.open();
  const [again] = ws2.framesOf("topics.subscribe");
  assert.deepEqual(again.data, { topic: "chat.7", since: "e:0", presence: true });
  ws2.answer(again, { topic: "chat.7", offset: "e:0", recovered: true, presence: [bob], presence_capped: true });
  assert.deepEqual(calls.at(-1), [["bob"], "snapshot", undefined], "replaced, not merged");
  assert.equal(sub.capped, true);
  assert.deepEqual(h.errors, []);
});

test("without onPresence, no presence is asked for and its events are ignored", async () => {
  const h = harness();
  const ws = await h.open();
  const sub = h.client.subscribe("chat.7", () => {});
  const [ask] = ws.framesOf("topics.subscribe");
  assert.deepEqual(ask.data, { topic: "chat.7" });
  ws.answer(ask, { topic: "chat.7", offset: "e:0", recovered: false });
  ws.receive({ event: "presence.join", topic: "chat.7", data: { sub: "amy", name: "Amy" } });
  assert.deepEqual(sub.members, []);
  assert.throws(() => h.client.subscribe("x", () => {}, { onPresence: 1 }), TypeError);
});

test("a throwing handler is reported on error and does not stop delivery", async () => {
  const h = harness();
  const ws = await h.open();
  const got = [];
  h.client.subscribe("t", (d) => {
    got.push(d);
    throw new Error("app bug");
  });
  ws.receive({ event: "message", topic: "t", offset: "e:1", data: 1 });
  ws.receive({ event: "message", topic: "t", offset: "e:2", data: 2 });
  assert.deepEqual(got, [1, 2]);
  assert.deepEqual(h.errors.map((e) => e.message), ["app bug", "app bug"]);
  const events = [];
  const stop = h.client.on("event", (e) => events.push(e.event));
  ws.receive({ event: "custom", data: {} });
  stop();
  ws.receive({ event: "custom", data: {} });
  assert.deepEqual(events, ["custom"]);
});

// -- job watches -----------------------------------------------------------------------

test("watchJob drops repeated steps, re-watches from the last offset, resolves on job.done", async () => {
  const h = harness();
  const ws1 = await h.open();
  const steps = [];
  const done = h.client.watchJob("abc", (p) => steps.push(p.step));
  const [watch] = ws1.framesOf("jobs.watch");
  assert.deepEqual(watch.data, { job_id: "abc" });
  ws1.answer(watch, { job_id: "abc", offset: "e:0" });
  const progress = (ws, step, offset) =>
    ws.receive({
      event: "job.progress",
      topic: "job:abc",
      offset,
      data: { job_id: "abc", progress: step * 10, step, total_steps: 10, payload: {} },
    });
  progress(ws1, 1, "e:1");
  progress(ws1, 2, "e:2");
  progress(ws1, 2, "e:2");
  ws1.drop(1006);
  await h.clock.advance(250);
  const ws2 = await h.open();
  const [rewatch] = ws2.framesOf("jobs.watch");
  assert.deepEqual(rewatch.data, { job_id: "abc", since: "e:2" });
  ws2.answer(rewatch, { job_id: "abc", offset: "e:2" });
  progress(ws2, 2, "e:2"); // an overlapping replay
  progress(ws2, 3, "e:3");
  const end = { job_id: "abc", state: "SUCCESS", result: { steps: 3 } };
  ws2.receive({ event: "job.done", topic: "job:abc", offset: "e:4", data: end });
  assert.deepEqual(await done, end);
  assert.deepEqual(steps, [1, 2, 3]);
  progress(ws2, 4, "e:5");
  assert.deepEqual(steps, [1, 2, 3], "nothing after job.done");
});

/** A watch of job "abc" that saw steps 1 and 2, then a reconnect: [h, ws2, steps, done]. */
async function watchAcrossReconnect() {
  const h = harness();
  const ws1 = await h.open();
  const steps = [];
  const done = h.client.watchJob("abc", (p) => steps.push(p.step));
  ws1.answer(ws1.framesOf("jobs.watch")[0], { job_id: "abc", offset: "e:0" });
  for (const step of [1, 2]) jobProgress(ws1, step, `e:${step}`);
  ws1.drop(1006);
  await h.clock.advance(250);
  const ws2 = await h.open();
  return [h, ws2, steps, done];
}

const jobProgress = (ws, step, offset) =>
  ws.receive({
    event: "job.progress",
    topic: "job:abc",
    offset,
    data: { job_id: "abc", progress: step * 10, step, total_steps: 4, payload: {} },
  });

const END = { job_id: "abc", state: "SUCCESS", result: { steps: 4 } };
// The owner's copy, replayed at the reconnect before the re-watch is answered.
const OWNER_DONE = { event: "job.done", topic: "user.acme.u1", offset: "u:5", data: END };

test("a job.done on the personal channel waits for the re-watch's replay of the steps", async () => {
  const [, ws2, steps, done] = await watchAcrossReconnect();
  let resolved = null;
  done.then((d) => (resolved = d));
  ws2.receive(OWNER_DONE);
  await flush();
  assert.equal(resolved, null, "held: the steps the job's topic replays come first");
  ws2.answer(ws2.framesOf("jobs.watch")[0], { job_id: "abc", offset: "e:5" });
  jobProgress(ws2, 3, "e:3");
  jobProgress(ws2, 4, "e:4");
  await flush();
  assert.equal(resolved, null);
  ws2.receive({ event: "job.done", topic: "job:abc", offset: "e:5", data: END });
  assert.deepEqual(await done, END);
  assert.deepEqual(steps, [1, 2, 3, 4], "no step lost across the reconnect");
});

test("a held job.done resolves when the job's topic has nothing more to replay", async () => {
  for (const offset of ["e:2", "f:0"]) {
    // e:2: the re-watch is already where the watch was; f:0: a new epoch, nothing replayed
    const [, ws2, steps, done] = await watchAcrossReconnect();
    ws2.receive(OWNER_DONE);
    ws2.answer(ws2.framesOf("jobs.watch")[0], { job_id: "abc", offset });
    assert.deepEqual(await done, END, offset);
    assert.deepEqual(steps, [1, 2]);
  }
});

test("a held job.done resolves the watch that the server then refuses", async () => {
  const [h, ws2, , done] = await watchAcrossReconnect();
  ws2.receive(OWNER_DONE);
  ws2.fail(ws2.framesOf("jobs.watch")[0], 4, "job not found");
  assert.deepEqual(await done, END);
  assert.deepEqual(h.errors, []);
});

test("a refused watch rejects the promise", async () => {
  const h = harness();
  const ws = await h.open();
  const p = settle(h.client.watchJob("nope", () => {}));
  ws.fail(ws.framesOf("jobs.watch")[0], 4, "job not found");
  const e = await p;
  assert.deepEqual([e.code, e.status, e.message], [4, "NOT_FOUND", "job not found"]);
});

// -- close -----------------------------------------------------------------------------

test("close() rejects everything with CLOSED and never reconnects", async () => {
  const h = harness();
  const ws = await h.open();
  const flying = settle(h.client.call("echo", {}));
  const sub = h.client.subscribe("t", () => {});
  const job = settle(h.client.watchJob("j", () => {}));
  h.client.close();
  assert.equal(ws.closed.code, 1000);
  assert.deepEqual(h.states.at(-1), { state: "closed", code: 1000, reason: "closed by the client", attempt: 0, delay: 0 });
  for (const e of [await flying, await settle(sub.ready), await job]) {
    assert.deepEqual([e.code, e.status], [-5, "CLOSED"]);
  }
  ws.drop(1000);
  await h.clock.advance(60000);
  assert.equal(h.sockets.length, 1);
  assert.equal(h.states.length, 2, "open, closed: nothing after");
  assert.equal((await settle(h.client.call("echo", {}))).code, STATUS.CLOSED);
  assert.equal(h.client.subscribe("t", () => {}).active, false);
});

test("close() while reconnecting cancels the reconnect and rejects queued calls", async () => {
  const h = harness();
  (await h.open()).drop(1006);
  const queued = settle(h.client.call("echo", {}));
  h.client.close();
  assert.equal((await queued).code, STATUS.CLOSED);
  await h.clock.advance(60000);
  assert.equal(h.sockets.length, 1);
});

// Compiled (never run) by tests/test_client_js.py with `tsc --strict --noEmit`: typical uses
// of realtime.d.ts must type-check, misuses must not.

import {
  CLOSE_ACTIONS,
  type JobDone,
  type Page,
  PendingQueue,
  RealtimeError,
  STATUS,
  STATUS_NAMES,
  type StateChange,
  type Subscription,
  backoffDelay,
  closeAction,
  connect,
} from "../../realtime/static/realtime.js";

interface Project {
  id: number;
  name: string;
}

export async function usage(): Promise<void> {
  let n = 0;
  const client = connect("ws://localhost:8000/ws", {
    token: async ({ reason }) => `token-${reason}-${++n}`,
    auth: "frame",
    callTimeout: 5000,
    maxPending: 10,
    backoff: { base: 250 },
    WebSocket: globalThis.WebSocket,
    fetch: globalThis.fetch,
    random: Math.random,
  });
  connect("wss://example.org/ws", { token: "jwt", auth: "subprotocol", packages: { echo: 40 } });

  const stop = client.on("state", (s: StateChange) => console.log(s.state, s.code, s.delay));
  stop();
  client.on("error", (e) => console.log(e.message));
  client.on("event", (e) => console.log(e.event, e.topic, e.offset));
  await client.ready();

  const page = await client.call<Page<Project>>("projects.list", { page: 1, per_page: 20 });
  const first: string | undefined = page.data[0]?.name;
  const pages: number = page.meta.pages;
  const abort = new AbortController();
  const project = await client.call<Project>("projects.get", { id: 1 }, { signal: abort.signal, timeout: 100 });
  console.log(first, pages, project.id);

  try {
    await client.call("echo");
  } catch (err) {
    if (err instanceof RealtimeError && err.retryable) {
      const code: number = err.code;
      console.log(code, err.status, err.retryAfter, err.reqId, err.details);
    }
  }

  const sub: Subscription<{ op: string }> = client.subscribe<{ op: string }>(
    "projects.t1",
    (data, info) => console.log(data.op, info.offset),
    { since: "e:1", onReset: (r) => console.log(r.topic, r.offset, r.reason) },
  );
  const answer = await sub.ready;
  const recovered: boolean = answer.recovered;
  const offset: string | undefined = sub.offset;
  const who = await sub.presence();
  console.log(recovered, offset, who[0]?.name, (await client.presence("broadcast")).length);
  await sub.unsubscribe();
  const room = client.subscribe("chat.7", () => {}, {
    onPresence: (members, change) => {
      const names: string[] = members.map((m) => m.name);
      const joined: string | undefined = change.kind === "join" ? change.member?.sub : undefined;
      console.log(names, joined, change.capped);
    },
  });
  const here: number = room.members.length;
  const capped: boolean = room.capped;
  console.log(here, capped);
  // @ts-expect-error: a change kind the server does not send
  client.subscribe("chat.8", () => {}, { onPresence: (_m, c) => c.kind === "moved" });

  const done: JobDone = await client.watchJob("abc", (p) => console.log(p.step, p.progress));
  if (done.state === "SUCCESS") console.log(done.result);
  client.close();

  const delay: number = backoffDelay(3, { base: 500, max: 15000 }, () => 0.5);
  const action: "reconnect" | "terminal" = closeAction(4401);
  const q = new PendingQueue<string>(2);
  const ok: boolean = q.push("a");
  const notFound: -5 = STATUS.CLOSED;
  console.log(delay, action, ok, notFound, STATUS_NAMES[4], CLOSE_ACTIONS[1001]);

  // @ts-expect-error a token is required
  connect("ws://h/ws", {});
  // @ts-expect-error only "frame" or "subprotocol"
  connect("ws://h/ws", { token: "t", auth: "query" });
  // @ts-expect-error no such client event
  client.on("message", () => {});
  // @ts-expect-error the state is read-only
  client.state = "open";
  // @ts-expect-error a state handler gets a StateChange
  client.on("state", (s: number) => s);
}

// Type declarations of realtime.js, the browser client of the realtime protocol, version 1
// (shared/PROTOCOL.md, docs/protocol.md). Hand-written; `tsc --strict --noEmit` checks them.

/** Status codes: 0-9 from the server (PROTOCOL.md 2.3), negative ones from the client. */
export declare const STATUS: Readonly<{
  OK: 0;
  ERROR: 1;
  INVALID_DATA: 2;
  PERMISSION_DENIED: 3;
  NOT_FOUND: 4;
  RATE_LIMITED: 5;
  UNKNOWN_PACKAGE: 6;
  TIMEOUT: 7;
  CONFLICT: 8;
  UNAVAILABLE: 9;
  /** The socket dropped while the call was in flight; the server may have done it. */
  DISCONNECTED: -1;
  /** No answer within the call's timeout, counted from the call. */
  CLIENT_TIMEOUT: -2;
  /** The call's AbortSignal fired. */
  ABORTED: -3;
  /** `maxPending` calls were already waiting for a connection. */
  QUEUE_FULL: -4;
  /** `close()` was called, or the client stopped for good after a terminal close. */
  CLOSED: -5;
}>;

export type StatusName = keyof typeof STATUS;
export type StatusCode = (typeof STATUS)[StatusName];

/** Code to name, e.g. `STATUS_NAMES[4] === "NOT_FOUND"`. */
export declare const STATUS_NAMES: Readonly<Record<number, StatusName>>;

export declare class RealtimeError extends Error {
  constructor(code: number, message: string, extra?: { details?: unknown; reqId?: string | null });
  readonly name: "RealtimeError";
  /** A STATUS code: the server's `status_code`, or a negative client-side code. */
  readonly code: number;
  /** The code's name, e.g. "NOT_FOUND"; "UNKNOWN" for a code outside STATUS. */
  readonly status: StatusName | "UNKNOWN";
  /** `error.details` of the answer: for INVALID_DATA a list of `{path, reason}`. */
  readonly details: unknown;
  /** The req_id the call went out with; null when it was never sent. */
  readonly reqId: string | null;
  /** RATE_LIMITED, TIMEOUT, UNAVAILABLE and DISCONNECTED. The client never retries by itself. */
  readonly retryable: boolean;
  /** `error.details.retry_after` in seconds, when the server gave one. */
  readonly retryAfter: number | undefined;
}

export type CloseAction = "reconnect" | "terminal";

/** Close code to action; codes not listed reconnect. */
export declare const CLOSE_ACTIONS: Readonly<Record<number, CloseAction>>;
export declare function closeAction(code: number): CloseAction;

export interface BackoffOptions {
  /** Milliseconds; default 500. */
  base?: number;
  /** Milliseconds; default 15000. */
  max?: number;
}

/** Full jitter: `floor(random() * min(max, base * 2 ** attempt))` milliseconds. */
export declare function backoffDelay(
  attempt: number,
  backoff?: BackoffOptions,
  random?: () => number,
): number;

/** The bounded FIFO the client keeps its waiting calls in. */
export declare class PendingQueue<T> {
  constructor(limit: number);
  readonly limit: number;
  readonly size: number;
  /** False when full. */
  push(item: T): boolean;
  shift(): T | undefined;
  remove(item: T): boolean;
  drain(): T[];
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** The close code that caused the change; null on "open" and after a catalog or token failure. */
  code: number | null;
  reason: string;
  /** The reconnect attempt, from 0; reset after a successful open. */
  attempt: number;
  /** Milliseconds until the next attempt ("reconnecting"); 0 otherwise. */
  delay: number;
}

/** A server push: `{event, data}`, topic events add `topic` and `offset`. */
export interface ServerEvent {
  event: string;
  topic?: string;
  /** Opaque: compare for equality at most, never parse. */
  offset?: string;
  data?: unknown;
  [key: string]: unknown;
}

/**
 * Called for each new socket's token ("connect"), for a fresh one after a terminal close
 * ("rejected": bypass any cache), and on `auth.expiring` ("expiring").
 */
export type TokenProvider = (info: {
  reason: "connect" | "rejected" | "expiring";
}) => string | Promise<string>;

/**
 * What the client needs of a WebSocket: the browser's, or e.g. the `ws` package's. The
 * client also assigns its `onopen`, `onmessage`, `onclose` and `onerror`.
 */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface WebSocketConstructorLike {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}

/** A catalog entry as `GET /packages` lists it. */
export interface PackageInfo {
  pkg_id: number;
  name?: string;
  paginated?: boolean;
  [key: string]: unknown;
}

export interface ConnectOptions {
  /** A token, or a provider called for each new socket and on `auth.expiring`. */
  token: string | TokenProvider;
  /**
   * "frame" (default): the socket opens without a token and `auth.refresh {token}` is its
   * first frame; nothing else is sent before the answer, and "open" means authenticated.
   * "subprotocol": the token is offered as `bearer.<token>` next to `realtime.v1`; the
   * server checks it only after the socket opens, so "open" may be followed by a 4401.
   */
  auth?: "frame" | "subprotocol";
  /** Default: the socket URL's origin + `/packages` (ws -> http, wss -> https). */
  catalogUrl?: string;
  /**
   * name -> pkg_id (or a catalog-like entry); when given the catalog is not fetched. The
   * packages the client sends itself (auth.refresh, topics.*, jobs.watch) default to the
   * ids docs/protocol.md fixes. An answer carrying `meta` resolves `{data, meta}`.
   */
  packages?: Record<string, number | PackageInfo>;
  /** Default timeout of a call in milliseconds (10000); 0 or Infinity: none. */
  callTimeout?: number;
  /** Calls waiting for a connection, at most (100); over it call() rejects QUEUE_FULL. */
  maxPending?: number;
  backoff?: BackoffOptions;
  /** Default `globalThis.WebSocket`; Node 20 has none, pass e.g. the `ws` package's. */
  WebSocket?: WebSocketConstructorLike;
  fetch?: (input: string, init?: { headers?: Record<string, string> }) => Promise<{
    ok: boolean;
    status: number;
    json(): Promise<any>;
  }>;
  /** Default Math.random; drives the backoff jitter. */
  random?: () => number;
  /** Default globalThis.setTimeout; for tests with a virtual clock. */
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
}

export interface CallOptions {
  /** Milliseconds from the call (queued time included); default `callTimeout`. */
  timeout?: number;
  signal?: AbortSignal;
}

/** `meta` of a paginated answer. */
export interface PageMeta {
  page: number;
  per_page: number;
  total: number;
  pages: number;
}

export interface Page<T = unknown> {
  data: T[];
  meta: PageMeta;
}

export interface SubscribeAnswer {
  topic: string;
  offset: string;
  recovered: boolean;
  /** With `onPresence` only. */
  presence?: PresenceEntry[];
  presence_capped?: boolean;
}

export interface MessageInfo {
  topic: string;
  offset: string;
}

export interface ResetInfo {
  topic: string;
  /** Where the stream continues from. */
  offset: string;
  reason: "not recovered";
}

export interface SubscribeOptions {
  /** Resume after this offset (an earlier `subscription.offset`). */
  since?: string;
  /** The topic's history could not be replayed from `since`: reload the state. */
  onReset?: (info: ResetInfo) => void;
  /**
   * Pushed presence (`topics.subscribe` with `presence: true`: the topic's presence role
   * too): called with the members after each subscribe answer's snapshot (also after a
   * reconnect) and after each `presence.join` / `presence.leave`.
   */
  onPresence?: (members: PresenceEntry[], change: PresenceChange) => void;
}

export interface PresenceEntry {
  sub: string;
  name: string;
}

export interface PresenceChange {
  kind: "snapshot" | "join" | "leave";
  /** Who joined or left; null for a snapshot. */
  member: PresenceEntry | null;
  /** Over the server's cap: the members are the first ones and no events follow. */
  capped: boolean;
}

export declare class Subscription<T = unknown> {
  private constructor();
  readonly topic: string;
  /** The last offset known: last delivered, or the subscribe answer's. */
  readonly offset: string | undefined;
  /** False once unsubscribed, replaced, refused or closed. */
  readonly active: boolean;
  /** The first subscribe answer; rejects if it was refused (or the client closed). */
  readonly ready: Promise<SubscribeAnswer>;
  /** Stops delivery at once, sends topics.unsubscribe; never resubscribed. */
  unsubscribe(): Promise<void>;
  presence(): Promise<PresenceEntry[]>;
  /** With `onPresence`: the members now, one per user, sorted by `sub`. */
  readonly members: PresenceEntry[];
  /** With `onPresence`: the topic is over the server's presence cap. */
  readonly capped: boolean;
}

export interface JobProgress {
  job_id: string;
  progress: number;
  step: number;
  total_steps: number;
  payload: { message?: string; at?: number; [key: string]: unknown };
}

export interface JobDone {
  job_id: string;
  state: "SUCCESS" | "FAILURE" | "CANCELLED";
  result?: unknown;
  error?: string;
}

export interface ClientEvents {
  state: StateChange;
  event: ServerEvent;
  error: Error;
}

/**
 * Package name -> what `call` takes and resolves, as `realtime client-types` generates it
 * (`RealtimePackages`). Without one, `call` takes any name and object.
 */
export type PackageMap = { [name: string]: { request: unknown; response: unknown } };

/** The arguments after the name: `data` may be left out only when it has no required field. */
export type CallArgs<Request> = {} extends Request
  ? [data?: Request, options?: CallOptions]
  : [data: Request, options?: CallOptions];

/** Untyped (the default map): any name, any object. Typed: names and data checked. */
export type CallFunction<P extends PackageMap> = string extends keyof P
  ? <T = unknown>(name: string, data?: object, options?: CallOptions) => Promise<T>
  : <N extends keyof P & string>(name: N, ...args: CallArgs<P[N]["request"]>) => Promise<P[N]["response"]>;

export declare class RealtimeClient<P extends PackageMap = PackageMap> {
  constructor(url: string, options: ConnectOptions);
  readonly state: ConnectionState;
  /** Returns a function that removes the handler. */
  on<E extends keyof ClientEvents>(event: E, handler: (value: ClientEvents[E]) => void): () => void;
  off<E extends keyof ClientEvents>(event: E, handler: (value: ClientEvents[E]) => void): void;
  /** Resolves when the state next becomes "open" (at once if open); rejects once "closed". */
  ready(): Promise<void>;
  /** Resolves the answer's data, or `{data, meta}` for a paginated package. */
  readonly call: CallFunction<P>;
  subscribe<T = unknown>(
    topic: string,
    onMessage: (data: T, info: MessageInfo) => void,
    options?: SubscribeOptions,
  ): Subscription<T>;
  presence(topic: string): Promise<PresenceEntry[]>;
  /** Resolves with the data of the job's single `job.done`. */
  watchJob(jobId: string, onProgress?: (progress: JobProgress) => void): Promise<JobDone>;
  /** State "closed" with code 1000; rejects every waiting call with CLOSED; no reconnect. */
  close(): void;
}

export declare function connect<P extends PackageMap = PackageMap>(
  url: string,
  options: ConnectOptions,
): RealtimeClient<P>;

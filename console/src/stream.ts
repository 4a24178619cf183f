// The live event stream (`GET /api/v1/events`, a WebSocket). A browser cannot set
// an Authorization header on a WebSocket, so the token travels as a subprotocol,
// `phoenix.bearer.<base64url(token)>`, next to `phoenix.events.v1`, which the API
// selects. When the stream closes (the API restarted, this client fell behind,
// the network blinked) the page re-reads its data and subscribes again: NOTIFY is
// not a log, so events announced meanwhile are gone.

import { token, type StreamEvent } from "./api";

export const PROTOCOL = "phoenix.events.v1";

function base64url(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export interface StreamHandlers {
  onEvent(event: StreamEvent): void;
  /** Called after every (re)connect: re-read what the page shows. */
  onResync(): void;
  onState?(live: boolean, why: string): void;
}

/** Subscribes until `close()` is called; reconnects with backoff. */
export class EventStream {
  private socket: WebSocket | null = null;
  private closed = false;
  private delay = 500;
  private timer: number | undefined;
  /** Whether the page has read its data at least once. */
  private synced = false;

  constructor(
    private readonly query: string,
    private readonly handlers: StreamHandlers,
  ) {
    this.connect();
  }

  private connect() {
    if (this.closed) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/api/v1/events${this.query ? `?${this.query}` : ""}`;
    const protocols = [PROTOCOL];
    const t = token();
    if (t) protocols.push(`phoenix.bearer.${base64url(t)}`);
    const socket = new WebSocket(url, protocols);
    this.socket = socket;
    socket.onopen = () => {
      this.delay = 500;
      this.handlers.onState?.(true, "live");
      this.synced = true;
      this.handlers.onResync();
    };
    socket.onmessage = (message) => {
      try {
        this.handlers.onEvent(JSON.parse(String(message.data)) as StreamEvent);
      } catch {
        // An event this console cannot read (a newer API): ignore it.
      }
    };
    socket.onclose = (close) => {
      if (this.socket !== socket || this.closed) return;
      this.socket = null;
      if (!this.synced) {
        // Not live, but the page still shows what is there.
        this.synced = true;
        this.handlers.onResync();
      }
      this.handlers.onState?.(false, close.reason || `disconnected (code ${close.code}); reconnecting`);
      this.timer = window.setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10_000);
    };
  }

  close() {
    this.closed = true;
    window.clearTimeout(this.timer);
    this.socket?.close(1000);
    this.socket = null;
  }
}

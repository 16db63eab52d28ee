/**
 * SSEClient: a drop-in replacement for the browser's EventSource (same constructor, events,
 * readyState, reconnection and stream parsing as the WHATWG HTML spec) with what EventSource
 * lacks: request headers, method and body, retry with backoff and jitter, a heartbeat timeout,
 * an initial Last-Event-ID. It streams with fetch where the browser can, else with XHR.
 */
declare class SSEClient {
    static readonly CONNECTING = 0;
    static readonly OPEN = 1;
    static readonly CLOSED = 2;
    readonly CONNECTING = 0;
    readonly OPEN = 1;
    readonly CLOSED = 2;
    /** The stream's absolute URL. */
    readonly url: string;
    readonly withCredentials: boolean;
    /** CONNECTING (0), OPEN (1) or CLOSED (2). */
    readyState: number;
    /** The last event ID string, sent as `Last-Event-ID` when (re)connecting. */
    lastEventId: string;
    onopen: ((this: SSEClient, event: SSEClient.Event) => void) | null;
    onmessage: ((this: SSEClient, event: SSEClient.MessageEvent) => void) | null;
    onerror: ((this: SSEClient, event: SSEClient.ErrorEvent) => void) | null;
    onretry: ((this: SSEClient, event: SSEClient.RetryEvent) => void) | null;
    private readonly options;
    private listeners;
    /** The base reconnection delay: the retryDelay option until the stream sends `retry:`. */
    private reconnectionTime;
    /** Reconnection attempts since the last successful open. */
    private attempts;
    /** Where to reconnect: after a redirect, its target, as EventSource does. */
    private requestUrl;
    /** The origin of the response's final URL, for message events. */
    private origin;
    private abortRequest;
    private heartbeatTimer?;
    private reconnectTimer?;
    /** Throws a SyntaxError DOMException, as EventSource does, for a URL that can't be parsed. */
    constructor(url: string | URL, options?: SSEClient.Options);
    addEventListener<K extends keyof SSEClient.EventMap>(type: K, listener: SSEClient.Listener<SSEClient.EventMap[K]> | null): void;
    addEventListener(type: string, listener: SSEClient.Listener<SSEClient.MessageEvent> | null): void;
    removeEventListener(type: string, listener: SSEClient.Listener<any> | null): void;
    /** Calls the `on<type>` handler, then the listeners; a throwing listener doesn't stop the others.
     * As EventTarget does, it sets the event's target, currentTarget and eventPhase while listeners
     * run, honours stopImmediatePropagation(), and returns false if a listener cancelled it. */
    dispatchEvent(event: Event): boolean;
    close(): void;
    /** Starts a request, once the headers option gave its headers. `resuming` restarts an open
     * stream without announcing it again. */
    private connect;
    private startRequest;
    /** Network loss, end of stream, a stall or a retried 5xx: reconnect after a delay. */
    private reestablish;
    /** A response that isn't an event stream, or retries exhausted: close, then `error`. */
    private fail;
    private stopRequest;
    /** Called at each request and each chunk: a stream silent for heartbeatTimeout reconnects. */
    private restartHeartbeat;
}
declare namespace SSEClient {
    interface Options {
        /** Send cookies on cross-origin requests, as EventSource's own option. */
        withCredentials?: boolean;
        /** Request headers, e.g. `{Authorization: 'Bearer …'}`; or a function called before every
         * request that returns them, or a promise of them (e.g. while it refreshes a token). */
        headers?: RequestHeaders | (() => RequestHeaders | PromiseLike<RequestHeaders>);
        /** Default `'GET'`. */
        method?: string;
        /** Request body, e.g. with `method: 'POST'`. */
        body?: XMLHttpRequestBodyInit;
        /** Sent as `Last-Event-ID` from the first request on, to resume a stream. */
        lastEventId?: string;
        /** Reconnection delay in ms until the stream sets one with `retry:`. Default 3000. */
        retryDelay?: number;
        /** Each further attempt without a successful open multiplies the delay by this.
         * Default 1: a fixed delay, as EventSource. */
        backoff?: number;
        /** Cap of the reconnection delay in ms. Default none. */
        maxRetryDelay?: number;
        /** Removes up to this fraction (0–1) of each delay at random, so that many clients
         * don't reconnect in step. Default 0. */
        jitter?: number;
        /** Attempts without a successful open before giving up (close, then `error`).
         * Default unlimited. */
        maxRetries?: number;
        /** Reconnect on a 5xx status instead of failing as EventSource does. Default false. */
        retryOnServerError?: boolean;
        /** Reconnect when no byte arrived for this many ms (comments count). Default 0: off. */
        heartbeatTimeout?: number;
        /** XHR fallback only: past this many characters of response text, restart the request
         * between two events, resuming by Last-Event-ID (when the stream has ids), so that
         * memory stays bounded. Default 1048576. */
        xhrResponseLimit?: number;
    }
    type RequestHeaders = {
        [name: string]: string;
    };
    /** A DOM Event (`open`, `error`, `retry`), as EventSource dispatches. */
    interface Event extends globalThis.Event {
        readonly target: SSEClient;
        readonly currentTarget: SSEClient;
    }
    /** A DOM MessageEvent: an event of the stream. */
    interface MessageEvent extends globalThis.MessageEvent<string> {
        readonly target: SSEClient;
        readonly currentTarget: SSEClient;
    }
    interface ErrorEvent extends Event {
        /** The HTTP status when a response caused the error. */
        readonly status?: number;
    }
    interface RetryEvent extends Event {
        /** 1 for the first attempt after a successful open. */
        readonly attempt: number;
        /** Milliseconds until the attempt. */
        readonly delay: number;
    }
    interface EventMap {
        open: Event;
        message: MessageEvent;
        error: ErrorEvent;
        retry: RetryEvent;
    }
    type Listener<E> = ((this: SSEClient, event: E) => void) | {
        handleEvent(event: E): void;
    };
}
export default SSEClient;

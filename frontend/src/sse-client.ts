/**
 * SSEClient: a drop-in replacement for the browser's EventSource (same constructor, events,
 * readyState, reconnection and stream parsing as the WHATWG HTML spec) with what EventSource
 * lacks: request headers, method and body, retry with backoff and jitter, a heartbeat timeout,
 * an initial Last-Event-ID. It streams with fetch where the browser can, else with XHR.
 */
class SSEClient {
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
  readyState: number = SSEClient.CONNECTING;
  /** The last event ID string, sent as `Last-Event-ID` when (re)connecting. */
  lastEventId: string;
  onopen: ((this: SSEClient, event: SSEClient.Event) => void) | null = null;
  onmessage: ((this: SSEClient, event: SSEClient.MessageEvent) => void) | null = null;
  onerror: ((this: SSEClient, event: SSEClient.ErrorEvent) => void) | null = null;
  onretry: ((this: SSEClient, event: SSEClient.RetryEvent) => void) | null = null;

  private readonly options: SSEClient.Options;
  private listeners: { [type: string]: SSEClient.Listener<any>[] } = {};
  /** The base reconnection delay: the retryDelay option until the stream sends `retry:`. */
  private reconnectionTime: number;
  /** Reconnection attempts since the last successful open. */
  private attempts = 0;
  /** Where to reconnect: after a redirect, its target, as EventSource does. */
  private requestUrl: string;
  /** The origin of the response's final URL, for message events. */
  private origin = '';
  private abortRequest: (() => void) | null = null;
  private heartbeatTimer?: number;
  private reconnectTimer?: number;

  /** Throws a SyntaxError DOMException, as EventSource does, for a URL that can't be parsed. */
  constructor(url: string | URL, options?: SSEClient.Options) {
    var o = options || {};
    this.options = o;
    this.url = this.requestUrl = resolveUrl(String(url));
    this.withCredentials = !!o.withCredentials;
    this.lastEventId = o.lastEventId || '';
    this.reconnectionTime = o.retryDelay ?? 3000;
    this.connect(false);
  }

  addEventListener<K extends keyof SSEClient.EventMap>(
    type: K,
    listener: SSEClient.Listener<SSEClient.EventMap[K]> | null,
  ): void;
  addEventListener(type: string, listener: SSEClient.Listener<SSEClient.MessageEvent> | null): void;
  addEventListener(type: string, listener: SSEClient.Listener<any> | null): void {
    var list = this.listeners[type] || (this.listeners[type] = []);
    if (listener && list.indexOf(listener) < 0) list.push(listener);
  }

  removeEventListener(type: string, listener: SSEClient.Listener<any> | null): void {
    var list = this.listeners[type] || [];
    var index = list.indexOf(listener!);
    if (index >= 0) list.splice(index, 1);
  }

  /** Calls the `on<type>` handler, then the listeners; a throwing listener doesn't stop the others.
   * As EventTarget does, it sets the event's target, currentTarget and eventPhase while listeners
   * run, honours stopImmediatePropagation(), and returns false if a listener cancelled it. */
  dispatchEvent(event: Event): boolean {
    var type = event.type;
    var handler = /^(open|message|error|retry)$/.test(type) && (this as any)['on' + type];
    var registered = this.listeners[type] || [];
    var listeners = registered.slice();
    if (handler) listeners.unshift(handler);
    var stopped = false;
    var stopImmediatePropagation = event.stopImmediatePropagation;
    // Own properties over Event's read-only accessors, which only a native EventTarget sets.
    setFields(event, {
      target: this,
      currentTarget: this,
      srcElement: this,
      eventPhase: 2, // AT_TARGET
      stopImmediatePropagation: function () {
        stopped = true;
        if (stopImmediatePropagation) stopImmediatePropagation.call(event);
      },
    });
    for (var i = 0; i < listeners.length && !stopped; i++) {
      var listener = listeners[i];
      // Like EventTarget: one removed by an earlier listener is not called.
      if (listener !== handler && registered.indexOf(listener) < 0) continue;
      try {
        if (typeof listener === 'function') listener.call(this, event);
        else listener.handleEvent(event);
      } catch (error) {
        reportLater(error);
      }
    }
    setFields(event, { currentTarget: null, eventPhase: 0 });
    return !event.defaultPrevented;
  }

  close(): void {
    this.readyState = SSEClient.CLOSED;
    this.stopRequest();
    clearTimeout(this.reconnectTimer);
  }

  /** Starts a request, once the headers option gave its headers. `resuming` restarts an open
   * stream without announcing it again. */
  private connect(resuming: boolean): void {
    var self = this;
    var given = this.options.headers;
    // Armed from here on, so that headers that never come count as a stall.
    this.restartHeartbeat();
    if (typeof given !== 'function') return this.startRequest(resuming, given);
    var attempt = (this.abortRequest = function () {});
    function proceed(headers?: SSEClient.RequestHeaders): void {
      if (self.abortRequest === attempt) self.startRequest(resuming, headers);
    }
    // A headers function that throws or rejects fails this attempt as a lost connection does
    // (error, then a retry with backoff) and its error is reported, as a listener's is.
    function failed(error: unknown): void {
      if (self.abortRequest !== attempt) return;
      self.stopRequest();
      self.reestablish();
      reportLater(error);
    }
    try {
      var headers = given();
    } catch (error) {
      // Later: the constructor's caller has had no chance yet to listen for the error event.
      setTimeout(function () {
        failed(error);
      });
      return;
    }
    if (headers && typeof (headers as PromiseLike<unknown>).then === 'function') {
      (headers as PromiseLike<SSEClient.RequestHeaders>).then(proceed, failed);
    } else proceed(headers as SSEClient.RequestHeaders);
  }

  private startRequest(resuming: boolean, given?: SSEClient.RequestHeaders): void {
    var self = this;
    var o = this.options;
    var headers: SSEClient.RequestHeaders = { Accept: 'text/event-stream' };
    for (var name in given) headers[name] = given[name];
    // Header values are byte strings: send the id as UTF-8, as EventSource does.
    if (this.lastEventId) headers['Last-Event-ID'] = unescape(encodeURIComponent(this.lastEventId));
    var transport = fetchCanStream() ? fetchTransport : xhrTransport;
    var parser = new EventStreamParser(this.lastEventId, {
      dispatch: function (lastEventId, type, data) {
        if (!current()) return;
        self.lastEventId = lastEventId;
        if (data !== null) self.dispatchEvent(messageEvent(type, data, lastEventId, self.origin));
        // XHR keeps the whole response text: past the limit, restart the request here, between
        // two events, and resume by Last-Event-ID, so that memory stays bounded.
        var limit = o.xhrResponseLimit ?? 1048576;
        if (transport === xhrTransport && parser.position > limit && lastEventId && current()) {
          self.stopRequest();
          self.connect(true);
        }
      },
      retry: function (delay) {
        if (current()) self.reconnectionTime = delay;
      },
    });
    var request = {
      url: this.requestUrl,
      method: o.method || 'GET',
      headers: headers,
      body: o.body,
      withCredentials: this.withCredentials,
    };
    var abort = (this.abortRequest = transport(request, {
      response: function (status, contentType, finalUrl) {
        if (status === 200 && /^\s*text\/event-stream\s*(;|$)/i.test(contentType || '')) {
          if (finalUrl) self.requestUrl = finalUrl;
          self.origin = originOf(self.requestUrl);
          if (!resuming) {
            self.attempts = 0;
            self.readyState = SSEClient.OPEN;
            self.dispatchEvent(plainEvent('open'));
          }
        } else {
          self.stopRequest();
          if (status >= 500 && o.retryOnServerError) self.reestablish(status);
          else self.fail(status);
        }
      },
      text: function (chunk) {
        self.restartHeartbeat();
        parser.feed(chunk);
      },
      end: function () {
        self.stopRequest();
        self.reestablish();
      },
    }));
    /** Whether this request is still the client's: text a stopped one had read is stale. */
    function current(): boolean {
      return self.abortRequest === abort;
    }
  }

  /** Network loss, end of stream, a stall or a retried 5xx: reconnect after a delay. */
  private reestablish(status?: number): void {
    var o = this.options;
    if (this.attempts >= (o.maxRetries ?? Infinity)) return this.fail(status);
    var delay = Math.min(
      this.reconnectionTime * Math.pow(o.backoff || 1, this.attempts),
      o.maxRetryDelay ?? MAX_TIMEOUT,
    );
    delay -= delay * (o.jitter || 0) * Math.random();
    this.attempts++;
    this.readyState = SSEClient.CONNECTING;
    // Scheduled before the events, so that a handler calling close() cancels it.
    this.reconnectTimer = setTimeout(() => this.connect(false), delay);
    this.dispatchEvent(plainEvent('error', { status: status }));
    if (this.readyState === SSEClient.CONNECTING) {
      this.dispatchEvent(plainEvent('retry', { attempt: this.attempts, delay: delay }));
    }
  }

  /** A response that isn't an event stream, or retries exhausted: close, then `error`. */
  private fail(status?: number): void {
    this.close();
    this.dispatchEvent(plainEvent('error', { status: status }));
  }

  private stopRequest(): void {
    if (this.abortRequest) this.abortRequest();
    this.abortRequest = null;
    clearTimeout(this.heartbeatTimer);
  }

  /** Called at each request and each chunk: a stream silent for heartbeatTimeout reconnects. */
  private restartHeartbeat(): void {
    var timeout = this.options.heartbeatTimeout;
    clearTimeout(this.heartbeatTimer);
    if (timeout) {
      this.heartbeatTimer = setTimeout(() => {
        this.stopRequest();
        this.reestablish();
      }, timeout);
    }
  }
}

namespace SSEClient {
  export interface Options {
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

  export type RequestHeaders = { [name: string]: string };

  /** A DOM Event (`open`, `error`, `retry`), as EventSource dispatches. */
  export interface Event extends globalThis.Event {
    readonly target: SSEClient;
    readonly currentTarget: SSEClient;
  }

  /** A DOM MessageEvent: an event of the stream. */
  export interface MessageEvent extends globalThis.MessageEvent<string> {
    readonly target: SSEClient;
    readonly currentTarget: SSEClient;
  }

  export interface ErrorEvent extends Event {
    /** The HTTP status when a response caused the error. */
    readonly status?: number;
  }

  export interface RetryEvent extends Event {
    /** 1 for the first attempt after a successful open. */
    readonly attempt: number;
    /** Milliseconds until the attempt. */
    readonly delay: number;
  }

  export interface EventMap {
    open: Event;
    message: MessageEvent;
    error: ErrorEvent;
    retry: RetryEvent;
  }

  export type Listener<E> = ((this: SSEClient, event: E) => void) | { handleEvent(event: E): void };
}

/** @internal setTimeout's longest delay: a longer one would fire at once. */
var MAX_TIMEOUT = 2147483647;

/** @internal What the parser reports. */
interface ParserHandlers {
  /** At each blank line: the last event ID string, and the event if there is one. */
  dispatch(lastEventId: string, type: string, data: string | null): void;
  retry(delay: number): void;
}

/** @internal WHATWG HTML "Parsing an event stream", fed with decoded text in any chunks. */
class EventStreamParser {
  /** Characters read through the end of the last complete line. */
  position = 0;
  /** Characters fed before the current chunk. */
  private fed = 0;
  private line = '';
  /** The last chunk ended with CR: an LF starting the next one ends no other line. */
  private afterCR = false;
  private data = '';
  private eventType = '';

  constructor(
    private lastEventIdBuffer: string,
    private handlers: ParserHandlers,
  ) {}

  feed(text: string): void {
    var start = this.afterCR && text.charCodeAt(0) === 10 ? 1 : 0;
    if (text) this.afterCR = false;
    for (var i = start; i < text.length; i++) {
      var char = text.charCodeAt(i);
      if (char === 13 || char === 10) {
        var line = this.line + text.slice(start, i);
        this.line = '';
        if (char === 13) {
          if (i + 1 === text.length) this.afterCR = true;
          else if (text.charCodeAt(i + 1) === 10) i++;
        }
        start = i + 1;
        this.position = this.fed + start;
        this.processLine(line);
      }
    }
    this.fed += text.length;
    this.line += text.slice(start);
  }

  private processLine(line: string): void {
    if (!line) return this.dispatch();
    var colon = line.indexOf(':');
    if (colon === 0) return; // a comment
    var field = colon < 0 ? line : line.slice(0, colon);
    var value = colon < 0 ? '' : line.slice(line.charAt(colon + 1) === ' ' ? colon + 2 : colon + 1);
    if (field === 'data') this.data += value + '\n';
    else if (field === 'event') this.eventType = value;
    else if (field === 'id') {
      if (value.indexOf('\0') < 0) this.lastEventIdBuffer = value;
    } else if (field === 'retry') {
      if (/^\d+$/.test(value)) this.handlers.retry(parseInt(value, 10));
    }
  }

  private dispatch(): void {
    var data = this.data;
    var type = this.eventType;
    this.data = this.eventType = '';
    // No data, no event. Else the buffer ends with the LF appended to its last line: not data.
    this.handlers.dispatch(this.lastEventIdBuffer, type || 'message', data ? data.slice(0, -1) : null);
  }
}

/** @internal One HTTP request, as a transport makes it. */
interface StreamRequest {
  url: string;
  method: string;
  headers: { [name: string]: string };
  body?: XMLHttpRequestBodyInit;
  withCredentials: boolean;
}

/** @internal What a transport reports. It calls nothing after it was aborted. */
interface StreamHandlers {
  response(status: number, contentType: string | null, finalUrl: string): void;
  /** More decoded text. */
  text(chunk: string): void;
  /** The body ended, or the request failed without a response. */
  end(): void;
}

/** @internal Checked at each request, so that a page may remove or polyfill fetch late. */
function fetchCanStream(): boolean {
  return (
    typeof fetch === 'function' &&
    typeof ReadableStream === 'function' &&
    typeof TextDecoder === 'function' &&
    typeof AbortController === 'function'
  );
}

/** @internal Starts a request; returns the function that aborts it. */
function fetchTransport(request: StreamRequest, handlers: StreamHandlers): () => void {
  var controller = new AbortController();
  var active = true;
  fetch(request.url, {
    method: request.method,
    headers: request.headers,
    body: request.body,
    credentials: request.withCredentials ? 'include' : 'same-origin',
    cache: 'no-store',
    signal: controller.signal,
  })
    .then(function (response) {
      if (!active) return;
      handlers.response(response.status, response.headers.get('Content-Type'), response.url);
      if (!active) return;
      var reader = response.body!.getReader();
      // Decodes UTF-8 across chunk boundaries, strips a leading BOM, replaces invalid bytes.
      var decoder = new TextDecoder();
      function read(): Promise<void> {
        return reader.read().then(function (result) {
          if (!active) return;
          if (result.done) return handlers.end();
          handlers.text(decoder.decode(result.value, { stream: true }));
          return read();
        });
      }
      return read();
    })
    .catch(function () {
      if (active) handlers.end();
    });
  return function () {
    active = false;
    controller.abort();
  };
}

/** @internal Starts a request; returns the function that aborts it. */
function xhrTransport(request: StreamRequest, handlers: StreamHandlers): () => void {
  var xhr = new XMLHttpRequest();
  var active = true;
  var responded = false;
  var received = 0;
  xhr.open(request.method, request.url, true);
  xhr.withCredentials = request.withCredentials;
  // An event stream is UTF-8 whatever charset its Content-Type names.
  if (xhr.overrideMimeType) xhr.overrideMimeType('text/plain; charset=utf-8');
  for (var name in request.headers) xhr.setRequestHeader(name, request.headers[name]);
  xhr.onreadystatechange = function () {
    var state = xhr.readyState;
    // Status 0 means there was no response: a network error, handled at state 4.
    if (active && state >= 2 && !responded && xhr.status) {
      responded = true;
      handlers.response(xhr.status, xhr.getResponseHeader('Content-Type'), xhr.responseURL);
    }
    if (active && state >= 3) {
      var text = xhr.responseText;
      if (text.length > received) {
        var chunk = text.slice(received);
        received = text.length;
        handlers.text(chunk);
      }
    }
    if (active && state === 4) handlers.end();
  };
  xhr.send(request.body);
  return function () {
    active = false;
    xhr.abort();
  };
}

/** @internal Resolves url against the document's base URL, as EventSource does, and throws as it
 * does for one that can't be parsed. */
function resolveUrl(url: string): string {
  if (typeof URL !== 'function') {
    // Internet Explorer: an anchor resolves a URL, but can't tell an invalid one.
    if (typeof document === 'undefined') return url;
    var anchor = document.createElement('a');
    anchor.href = url;
    return anchor.href;
  }
  var base =
    typeof document !== 'undefined'
      ? document.baseURI
      : typeof location !== 'undefined'
        ? location.href
        : undefined;
  try {
    return new URL(url, base).href;
  } catch (error) {
    var message =
      "Failed to construct 'SSEClient': Cannot open an EventSource to '" +
      url +
      "'. The URL is invalid.";
    throw typeof DOMException === 'function'
      ? new DOMException(message, 'SyntaxError')
      : new SyntaxError(message);
  }
}

/** @internal A plain Event, as EventSource's open and error are, carrying `fields`. Where Event
 * is no constructor (Internet Explorer) document.createEvent makes one; with neither, an object. */
function plainEvent(type: string, fields?: { [field: string]: number | undefined }): Event {
  var event: any;
  if (typeof Event === 'function') event = new Event(type);
  else if (typeof document !== 'undefined') {
    event = document.createEvent('Event');
    event.initEvent(type, false, false);
  } else event = { type: type };
  for (var key in fields) if (fields[key] !== undefined) event[key] = fields[key];
  return event;
}

/** @internal A MessageEvent, as EventSource dispatches for each event of the stream. */
function messageEvent(type: string, data: string, lastEventId: string, origin: string): Event {
  if (typeof MessageEvent === 'function') {
    return new MessageEvent(type, { data: data, lastEventId: lastEventId, origin: origin });
  }
  if (typeof document === 'undefined') {
    return { type: type, data: data, lastEventId: lastEventId, origin: origin } as any;
  }
  var event = document.createEvent('MessageEvent');
  event.initMessageEvent(type, false, false, data, origin, lastEventId, null);
  return event;
}

/** @internal Sets own, configurable properties (over an Event's read-only accessors). */
function setFields(event: Event, fields: { [name: string]: unknown }): void {
  for (var name in fields) {
    Object.defineProperty(event, name, { value: fields[name], configurable: true });
  }
}

/** @internal Reports an error as uncaught, without stopping the caller. */
function reportLater(error: unknown): void {
  setTimeout(function () {
    throw error;
  });
}

/** @internal scheme://host[:port] of an absolute URL. */
function originOf(url: string): string {
  var match = /^([a-z][a-z\d+.-]*:\/\/)(?:[^\/?#]*@)?([^\/?#]*)/i.exec(url);
  return match ? match[1] + match[2] : 'null';
}

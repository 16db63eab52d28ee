(function (root, factory) {
  if (typeof define === 'function' && define.amd) define([], factory);
  else if (typeof module === 'object' && module.exports) module.exports = factory();
  else root.SSEClient = factory();
})(typeof self !== 'undefined' ? self : this, function () {
"use strict";
/**
 * SSEClient: a drop-in replacement for the browser's EventSource (same constructor, events,
 * readyState, reconnection and stream parsing as the WHATWG HTML spec) with what EventSource
 * lacks: request headers, method and body, retry with backoff and jitter, a heartbeat timeout,
 * an initial Last-Event-ID. It streams with fetch where the browser can, else with XHR.
 */
var SSEClient = /** @class */ (function () {
    /** Throws a SyntaxError DOMException, as EventSource does, for a URL that can't be parsed. */
    function SSEClient(url, options) {
        var _a;
        this.CONNECTING = 0;
        this.OPEN = 1;
        this.CLOSED = 2;
        /** CONNECTING (0), OPEN (1) or CLOSED (2). */
        this.readyState = SSEClient.CONNECTING;
        this.onopen = null;
        this.onmessage = null;
        this.onerror = null;
        this.onretry = null;
        this.listeners = {};
        /** Reconnection attempts since the last successful open. */
        this.attempts = 0;
        /** The origin of the response's final URL, for message events. */
        this.origin = '';
        this.abortRequest = null;
        var o = options || {};
        this.options = o;
        this.url = this.requestUrl = resolveUrl(String(url));
        this.withCredentials = !!o.withCredentials;
        this.lastEventId = o.lastEventId || '';
        this.reconnectionTime = (_a = o.retryDelay) !== null && _a !== void 0 ? _a : 3000;
        this.connect(false);
    }
    SSEClient.prototype.addEventListener = function (type, listener) {
        var list = this.listeners[type] || (this.listeners[type] = []);
        if (listener && list.indexOf(listener) < 0)
            list.push(listener);
    };
    SSEClient.prototype.removeEventListener = function (type, listener) {
        var list = this.listeners[type] || [];
        var index = list.indexOf(listener);
        if (index >= 0)
            list.splice(index, 1);
    };
    /** Calls the `on<type>` handler, then the listeners; a throwing listener doesn't stop the others.
     * As EventTarget does, it sets the event's target, currentTarget and eventPhase while listeners
     * run, honours stopImmediatePropagation(), and returns false if a listener cancelled it. */
    SSEClient.prototype.dispatchEvent = function (event) {
        var type = event.type;
        var handler = /^(open|message|error|retry)$/.test(type) && this['on' + type];
        var registered = this.listeners[type] || [];
        var listeners = registered.slice();
        if (handler)
            listeners.unshift(handler);
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
                if (stopImmediatePropagation)
                    stopImmediatePropagation.call(event);
            },
        });
        for (var i = 0; i < listeners.length && !stopped; i++) {
            var listener = listeners[i];
            // Like EventTarget: one removed by an earlier listener is not called.
            if (listener !== handler && registered.indexOf(listener) < 0)
                continue;
            try {
                if (typeof listener === 'function')
                    listener.call(this, event);
                else
                    listener.handleEvent(event);
            }
            catch (error) {
                reportLater(error);
            }
        }
        setFields(event, { currentTarget: null, eventPhase: 0 });
        return !event.defaultPrevented;
    };
    SSEClient.prototype.close = function () {
        this.readyState = SSEClient.CLOSED;
        this.stopRequest();
        clearTimeout(this.reconnectTimer);
    };
    /** Starts a request, once the headers option gave its headers. `resuming` restarts an open
     * stream without announcing it again. */
    SSEClient.prototype.connect = function (resuming) {
        var self = this;
        var given = this.options.headers;
        // Armed from here on, so that headers that never come count as a stall.
        this.restartHeartbeat();
        if (typeof given !== 'function')
            return this.startRequest(resuming, given);
        var attempt = (this.abortRequest = function () { });
        function proceed(headers) {
            if (self.abortRequest === attempt)
                self.startRequest(resuming, headers);
        }
        // A headers function that throws or rejects fails this attempt as a lost connection does
        // (error, then a retry with backoff) and its error is reported, as a listener's is.
        function failed(error) {
            if (self.abortRequest !== attempt)
                return;
            self.stopRequest();
            self.reestablish();
            reportLater(error);
        }
        try {
            var headers = given();
        }
        catch (error) {
            // Later: the constructor's caller has had no chance yet to listen for the error event.
            setTimeout(function () {
                failed(error);
            });
            return;
        }
        if (headers && typeof headers.then === 'function') {
            headers.then(proceed, failed);
        }
        else
            proceed(headers);
    };
    SSEClient.prototype.startRequest = function (resuming, given) {
        var self = this;
        var o = this.options;
        var headers = { Accept: 'text/event-stream' };
        for (var name in given)
            headers[name] = given[name];
        // Header values are byte strings: send the id as UTF-8, as EventSource does.
        if (this.lastEventId)
            headers['Last-Event-ID'] = unescape(encodeURIComponent(this.lastEventId));
        var transport = fetchCanStream() ? fetchTransport : xhrTransport;
        var parser = new EventStreamParser(this.lastEventId, {
            dispatch: function (lastEventId, type, data) {
                var _a;
                if (!current())
                    return;
                self.lastEventId = lastEventId;
                if (data !== null)
                    self.dispatchEvent(messageEvent(type, data, lastEventId, self.origin));
                // XHR keeps the whole response text: past the limit, restart the request here, between
                // two events, and resume by Last-Event-ID, so that memory stays bounded.
                var limit = (_a = o.xhrResponseLimit) !== null && _a !== void 0 ? _a : 1048576;
                if (transport === xhrTransport && parser.position > limit && lastEventId && current()) {
                    self.stopRequest();
                    self.connect(true);
                }
            },
            retry: function (delay) {
                if (current())
                    self.reconnectionTime = delay;
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
                    if (finalUrl)
                        self.requestUrl = finalUrl;
                    self.origin = originOf(self.requestUrl);
                    if (!resuming) {
                        self.attempts = 0;
                        self.readyState = SSEClient.OPEN;
                        self.dispatchEvent(plainEvent('open'));
                    }
                }
                else {
                    self.stopRequest();
                    if (status >= 500 && o.retryOnServerError)
                        self.reestablish(status);
                    else
                        self.fail(status);
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
        function current() {
            return self.abortRequest === abort;
        }
    };
    /** Network loss, end of stream, a stall or a retried 5xx: reconnect after a delay. */
    SSEClient.prototype.reestablish = function (status) {
        var _this = this;
        var _a, _b;
        var o = this.options;
        if (this.attempts >= ((_a = o.maxRetries) !== null && _a !== void 0 ? _a : Infinity))
            return this.fail(status);
        var delay = Math.min(this.reconnectionTime * Math.pow(o.backoff || 1, this.attempts), (_b = o.maxRetryDelay) !== null && _b !== void 0 ? _b : MAX_TIMEOUT);
        delay -= delay * (o.jitter || 0) * Math.random();
        this.attempts++;
        this.readyState = SSEClient.CONNECTING;
        // Scheduled before the events, so that a handler calling close() cancels it.
        this.reconnectTimer = setTimeout(function () { return _this.connect(false); }, delay);
        this.dispatchEvent(plainEvent('error', { status: status }));
        if (this.readyState === SSEClient.CONNECTING) {
            this.dispatchEvent(plainEvent('retry', { attempt: this.attempts, delay: delay }));
        }
    };
    /** A response that isn't an event stream, or retries exhausted: close, then `error`. */
    SSEClient.prototype.fail = function (status) {
        this.close();
        this.dispatchEvent(plainEvent('error', { status: status }));
    };
    SSEClient.prototype.stopRequest = function () {
        if (this.abortRequest)
            this.abortRequest();
        this.abortRequest = null;
        clearTimeout(this.heartbeatTimer);
    };
    /** Called at each request and each chunk: a stream silent for heartbeatTimeout reconnects. */
    SSEClient.prototype.restartHeartbeat = function () {
        var _this = this;
        var timeout = this.options.heartbeatTimeout;
        clearTimeout(this.heartbeatTimer);
        if (timeout) {
            this.heartbeatTimer = setTimeout(function () {
                _this.stopRequest();
                _this.reestablish();
            }, timeout);
        }
    };
    SSEClient.CONNECTING = 0;
    SSEClient.OPEN = 1;
    SSEClient.CLOSED = 2;
    return SSEClient;
}());
/** @internal setTimeout's longest delay: a longer one would fire at once. */
var MAX_TIMEOUT = 2147483647;
/** @internal WHATWG HTML "Parsing an event stream", fed with decoded text in any chunks. */
var EventStreamParser = /** @class */ (function () {
    function EventStreamParser(lastEventIdBuffer, handlers) {
        this.lastEventIdBuffer = lastEventIdBuffer;
        this.handlers = handlers;
        /** Characters read through the end of the last complete line. */
        this.position = 0;
        /** Characters fed before the current chunk. */
        this.fed = 0;
        this.line = '';
        /** The last chunk ended with CR: an LF starting the next one ends no other line. */
        this.afterCR = false;
        this.data = '';
        this.eventType = '';
    }
    EventStreamParser.prototype.feed = function (text) {
        var start = this.afterCR && text.charCodeAt(0) === 10 ? 1 : 0;
        if (text)
            this.afterCR = false;
        for (var i = start; i < text.length; i++) {
            var char = text.charCodeAt(i);
            if (char === 13 || char === 10) {
                var line = this.line + text.slice(start, i);
                this.line = '';
                if (char === 13) {
                    if (i + 1 === text.length)
                        this.afterCR = true;
                    else if (text.charCodeAt(i + 1) === 10)
                        i++;
                }
                start = i + 1;
                this.position = this.fed + start;
                this.processLine(line);
            }
        }
        this.fed += text.length;
        this.line += text.slice(start);
    };
    EventStreamParser.prototype.processLine = function (line) {
        if (!line)
            return this.dispatch();
        var colon = line.indexOf(':');
        if (colon === 0)
            return; // a comment
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? '' : line.slice(line.charAt(colon + 1) === ' ' ? colon + 2 : colon + 1);
        if (field === 'data')
            this.data += value + '\n';
        else if (field === 'event')
            this.eventType = value;
        else if (field === 'id') {
            if (value.indexOf('\0') < 0)
                this.lastEventIdBuffer = value;
        }
        else if (field === 'retry') {
            if (/^\d+$/.test(value))
                this.handlers.retry(parseInt(value, 10));
        }
    };
    EventStreamParser.prototype.dispatch = function () {
        var data = this.data;
        var type = this.eventType;
        this.data = this.eventType = '';
        // No data, no event. Else the buffer ends with the LF appended to its last line: not data.
        this.handlers.dispatch(this.lastEventIdBuffer, type || 'message', data ? data.slice(0, -1) : null);
    };
    return EventStreamParser;
}());
/** @internal Checked at each request, so that a page may remove or polyfill fetch late. */
function fetchCanStream() {
    return (typeof fetch === 'function' &&
        typeof ReadableStream === 'function' &&
        typeof TextDecoder === 'function' &&
        typeof AbortController === 'function');
}
/** @internal Starts a request; returns the function that aborts it. */
function fetchTransport(request, handlers) {
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
        if (!active)
            return;
        handlers.response(response.status, response.headers.get('Content-Type'), response.url);
        if (!active)
            return;
        var reader = response.body.getReader();
        // Decodes UTF-8 across chunk boundaries, strips a leading BOM, replaces invalid bytes.
        var decoder = new TextDecoder();
        function read() {
            return reader.read().then(function (result) {
                if (!active)
                    return;
                if (result.done)
                    return handlers.end();
                handlers.text(decoder.decode(result.value, { stream: true }));
                return read();
            });
        }
        return read();
    })
        .catch(function () {
        if (active)
            handlers.end();
    });
    return function () {
        active = false;
        controller.abort();
    };
}
/** @internal Starts a request; returns the function that aborts it. */
function xhrTransport(request, handlers) {
    var xhr = new XMLHttpRequest();
    var active = true;
    var responded = false;
    var received = 0;
    xhr.open(request.method, request.url, true);
    xhr.withCredentials = request.withCredentials;
    // An event stream is UTF-8 whatever charset its Content-Type names.
    if (xhr.overrideMimeType)
        xhr.overrideMimeType('text/plain; charset=utf-8');
    for (var name in request.headers)
        xhr.setRequestHeader(name, request.headers[name]);
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
        if (active && state === 4)
            handlers.end();
    };
    xhr.send(request.body);
    return function () {
        active = false;
        xhr.abort();
    };
}
/** @internal Resolves url against the document's base URL, as EventSource does, and throws as it
 * does for one that can't be parsed. */
function resolveUrl(url) {
    if (typeof URL !== 'function') {
        // Internet Explorer: an anchor resolves a URL, but can't tell an invalid one.
        if (typeof document === 'undefined')
            return url;
        var anchor = document.createElement('a');
        anchor.href = url;
        return anchor.href;
    }
    var base = typeof document !== 'undefined'
        ? document.baseURI
        : typeof location !== 'undefined'
            ? location.href
            : undefined;
    try {
        return new URL(url, base).href;
    }
    catch (error) {
        var message = "Failed to construct 'SSEClient': Cannot open an EventSource to '" +
            url +
            "'. The URL is invalid.";
        throw typeof DOMException === 'function'
            ? new DOMException(message, 'SyntaxError')
            : new SyntaxError(message);
    }
}
/** @internal A plain Event, as EventSource's open and error are, carrying `fields`. Where Event
 * is no constructor (Internet Explorer) document.createEvent makes one; with neither, an object. */
function plainEvent(type, fields) {
    var event;
    if (typeof Event === 'function')
        event = new Event(type);
    else if (typeof document !== 'undefined') {
        event = document.createEvent('Event');
        event.initEvent(type, false, false);
    }
    else
        event = { type: type };
    for (var key in fields)
        if (fields[key] !== undefined)
            event[key] = fields[key];
    return event;
}
/** @internal A MessageEvent, as EventSource dispatches for each event of the stream. */
function messageEvent(type, data, lastEventId, origin) {
    if (typeof MessageEvent === 'function') {
        return new MessageEvent(type, { data: data, lastEventId: lastEventId, origin: origin });
    }
    if (typeof document === 'undefined') {
        return { type: type, data: data, lastEventId: lastEventId, origin: origin };
    }
    var event = document.createEvent('MessageEvent');
    event.initMessageEvent(type, false, false, data, origin, lastEventId, null);
    return event;
}
/** @internal Sets own, configurable properties (over an Event's read-only accessors). */
function setFields(event, fields) {
    for (var name in fields) {
        Object.defineProperty(event, name, { value: fields[name], configurable: true });
    }
}
/** @internal Reports an error as uncaught, without stopping the caller. */
function reportLater(error) {
    setTimeout(function () {
        throw error;
    });
}
/** @internal scheme://host[:port] of an absolute URL. */
function originOf(url) {
    var match = /^([a-z][a-z\d+.-]*:\/\/)(?:[^\/?#]*@)?([^\/?#]*)/i.exec(url);
    return match ? match[1] + match[2] : 'null';
}
return SSEClient;
});
//# sourceMappingURL=sse-client.js.map

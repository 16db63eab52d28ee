(() => {
  var __defProp = Object.defineProperty;
  var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
  var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

  // src/codes.ts
  var CODES = /\\@|@([bius])|@(r)|@\[(#[0-9a-fA-F]{6})\]/g;
  function parseCodes(source) {
    const segments = [];
    let style = {};
    let text = "";
    let end = 0;
    for (const match of source.matchAll(CODES)) {
      text += source.slice(end, match.index);
      end = (match.index ?? 0) + match[0].length;
      if (match[0] === "\\@") {
        text += "@";
        continue;
      }
      if (text) segments.push({ text, style });
      text = "";
      const [, flag, reset, color] = match;
      style = reset ? {} : flag ? { ...style, [flag]: true } : { ...style, color: color.toLowerCase() };
    }
    text += source.slice(end);
    if (text) segments.push({ text, style });
    return segments;
  }
  function messageSegments(text, meta) {
    return meta === "ai" || meta === "fallback" ? [{ text, style: {} }] : parseCodes(text);
  }
  function styledSpan(style) {
    const span = document.createElement("span");
    for (const flag of ["b", "i", "u", "s"]) if (style[flag]) span.classList.add(`fmt-${flag}`);
    if (style.color) span.style.color = style.color;
    return span;
  }

  // src/common.ts
  function byId(id) {
    const node = document.getElementById(id);
    if (!node) throw new Error(`#${id} is missing from the page`);
    return node;
  }
  var ApiError = class extends Error {
    constructor(status, message) {
      super(message);
      __publicField(this, "status", status);
    }
  };
  async function api(url, options = {}) {
    const headers = {};
    if (options.body !== void 0) headers["Content-Type"] = "application/json";
    if (options.token) headers.Authorization = `Bearer ${options.token}`;
    let response;
    try {
      response = await fetch(url, {
        method: options.method || "GET",
        headers,
        body: options.body === void 0 ? void 0 : JSON.stringify(options.body),
        credentials: "same-origin"
      });
    } catch {
      throw new ApiError(0, "Cannot reach the server: check the connection and try again");
    }
    const reply = await response.json().catch(() => null);
    if (!response.ok || !reply || reply.success === false) {
      const message = reply && typeof reply.msg === "string" ? reply.msg : `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message);
    }
    return reply;
  }

  // src/player.ts
  var params = new URLSearchParams(location.search);
  var ROOM_ID = /^[a-zA-Z0-9]{1,64}$/;
  var DEFAULT_SPEED = 30;
  var CJK = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3000-\u303f\uff00-\uffef]/u;
  var CJK_FACTOR = 2;
  var HOLD_MS = 1500;
  var MAX_QUEUE = 100;
  var MISSED_HEARTBEATS = 3;
  var box = byId("dialog");
  var nameplate = byId("speaker");
  var quoteTag = byId("quote");
  var textBox = byId("text");
  var connection = byId("connection");
  var controller = byId("controller");
  var queue = [];
  var current = null;
  var laidOut = 0;
  var pending = [];
  var next = 0;
  var typing;
  var typedAt = 0;
  var holding;
  var idling;
  var idleMs = Math.max(0, Number(params.get("idle")) || 0) * 1e3;
  function enqueue(line) {
    if (queue.push(line) > MAX_QUEUE) queue.shift();
    if (!current) showNext();
    else if (box.dataset.state === "done" && holding === void 0) hold();
  }
  function hold() {
    holding = window.setTimeout(showNext, typedAt + HOLD_MS - performance.now());
  }
  function showNext() {
    window.clearTimeout(typing);
    window.clearTimeout(holding);
    window.clearTimeout(idling);
    typing = holding = void 0;
    current = queue.shift() ?? null;
    if (!current) {
      box.dataset.state = "idle";
      box.classList.add("hidden");
      return;
    }
    box.classList.remove("hidden");
    nameplate.textContent = current.speaker;
    nameplate.hidden = !current.speaker;
    quoteTag.textContent = current.quote === void 0 ? "" : current.quote ? `quote · ${current.quote}` : "quote";
    quoteTag.hidden = current.quote === void 0;
    textBox.replaceChildren();
    pending = [];
    next = laidOut = 0;
    box.dataset.id = current.id;
    box.dataset.state = "typing";
    layOut();
    type();
  }
  function layOut() {
    if (!current) return;
    for (const { text, style } of current.segments.slice(laidOut)) {
      const span = styledSpan(style);
      const node = document.createTextNode("");
      span.append(node);
      textBox.append(span);
      for (const character of text) pending.push([node, character]);
    }
    laidOut = current.segments.length;
  }
  function type() {
    if (!current) return;
    if (next === pending.length) return typed();
    const [node, character] = pending[next++];
    node.appendData(character);
    const delay = 1e3 / current.speed * (CJK.test(character) ? CJK_FACTOR : 1);
    typing = window.setTimeout(type, delay);
  }
  function finish() {
    window.clearTimeout(typing);
    for (; next < pending.length; next++) pending[next][0].appendData(pending[next][1]);
    typed();
  }
  function typed() {
    typing = void 0;
    if (!current || current.live) {
      box.dataset.state = "streaming";
      return;
    }
    box.dataset.state = "done";
    typedAt = performance.now();
    if (queue.length) hold();
    else if (idleMs) idling = window.setTimeout(() => box.classList.add("hidden"), idleMs);
  }
  function advance() {
    if (typing !== void 0) finish();
    else if (queue.length) showNext();
  }
  document.addEventListener("click", advance);
  document.addEventListener("keydown", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    advance();
  });
  function streamLine(stream) {
    return current?.stream === stream ? current : queue.find((line) => line.stream === stream);
  }
  function onDelta(delta) {
    let line = streamLine(delta.stream);
    if (delta.error !== void 0) {
      if (line === current) showNext();
      else if (line) queue.splice(queue.indexOf(line), 1);
      return;
    }
    if (!line) {
      line = { id: delta.stream, speaker: delta.speaker, segments: [], speed: roomSpeed, stream: delta.stream, live: true };
      enqueue(line);
    }
    line.segments.push({ text: delta.content ?? "", style: {} });
    if (line === current) {
      layOut();
      if (typing === void 0) {
        box.dataset.state = "typing";
        type();
      }
    }
  }
  var roomSpeed = DEFAULT_SPEED;
  function speedOf(value) {
    return typeof value === "number" && value >= 1 && value <= 1e3 ? value : void 0;
  }
  function segmentsOf(payload) {
    const { data } = payload;
    return typeof data?.message === "string" ? messageSegments(data.message, payload.meta) : null;
  }
  function onMessage(payload) {
    const { data } = payload;
    const segments = segmentsOf(payload);
    if (!segments) return;
    const stream = typeof data.stream === "string" ? data.stream : void 0;
    const live = stream === void 0 ? void 0 : streamLine(stream);
    if (live) {
      live.id = String(payload.id);
      live.live = false;
      const changed = segments.map((s) => s.text).join("") !== live.segments.map((s) => s.text).join("");
      if (changed) live.segments = segments;
      if (live !== current) return;
      if (changed) {
        queue.unshift(live);
        showNext();
      } else {
        box.dataset.id = live.id;
        if (typing === void 0) typed();
      }
      return;
    }
    enqueue({
      id: String(payload.id),
      speaker: payload.speaker,
      segments,
      speed: speedOf(data.speed) ?? roomSpeed,
      quote: payload.meta === "fallback" ? typeof data.from === "string" ? data.from : "" : void 0
    });
  }
  function onChange(payload, retracted) {
    const id = String(payload.id);
    const line = current?.id === id ? current : queue.find((waiting) => waiting.id === id);
    if (!line) return;
    const segments = retracted ? null : segmentsOf(payload);
    if (!segments) {
      if (line === current) showNext();
      else queue.splice(queue.indexOf(line), 1);
      return;
    }
    line.speaker = payload.speaker;
    line.segments = segments;
    line.speed = speedOf(payload.data.speed) ?? line.speed;
    if (line !== current) return;
    const shown = typing === void 0;
    queue.unshift(line);
    showNext();
    if (shown) finish();
  }
  function show(indicator, state, text) {
    indicator.dataset.state = state;
    indicator.textContent = text;
  }
  var heartbeatS = 5;
  var offline;
  function controllers(count) {
    window.clearTimeout(offline);
    if (count > 0) {
      show(controller, "online", "controller online");
      offline = window.setTimeout(() => show(controller, "offline", "controller offline"), MISSED_HEARTBEATS * heartbeatS * 1e3);
    } else show(controller, "offline", "controller offline");
  }
  var settingsLoaded = false;
  function onHello(hello) {
    if (hello.fallback) {
      show(connection, "fallback", `${hello.reason || "no such room"}: showing quotes`);
      show(controller, "offline", "controller offline");
      return;
    }
    show(connection, "live", `live · ${hello.room}`);
    if (hello.heartbeat_s) heartbeatS = hello.heartbeat_s;
    if (hello.presence) controllers(hello.presence.controllers);
    if (!settingsLoaded) {
      settingsLoaded = true;
      loadSettings(hello.room);
    }
  }
  async function loadSettings(roomId) {
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    try {
      const { room } = await api(`${hub}/api/v1/rooms/${roomId}${query}`);
      roomSpeed = speedOf(room.settings?.typewriter_speed) ?? DEFAULT_SPEED;
      if (!params.get("theme") && typeof room.settings?.theme === "string") {
        document.documentElement.dataset.theme = room.settings.theme;
      }
    } catch {
      settingsLoaded = false;
    }
  }
  function closedReason(status) {
    if (status === 401 || status === 403) return "private room: add ?token=";
    if (status === 404) return "no such room";
    return status ? `disconnected (${status})` : "disconnected";
  }
  function hubBase(value) {
    if (!value) return "";
    try {
      const url = new URL(value);
      if (url.protocol === "http:" || url.protocol === "https:") return url.origin + url.pathname.replace(/\/+$/, "");
    } catch {
    }
    throw new Error(`?hub= must be an http(s) URL, not ${value}`);
  }
  function roomOf() {
    const last = location.pathname.split("/").pop() || "";
    return params.get("room") ?? (ROOM_ID.test(last) ? last : "");
  }
  var token = params.get("token") || "";
  var hub = "";
  function start() {
    if (params.get("theme")) document.documentElement.dataset.theme = params.get("theme");
    if (params.get("bg") === "transparent") document.documentElement.classList.add("transparent");
    if (params.get("status") === "hide") byId("status").hidden = true;
    try {
      hub = hubBase(params.get("hub"));
    } catch (error) {
      show(connection, "closed", error.message);
      return;
    }
    const room = roomOf();
    const query = new URLSearchParams(token ? { token } : {});
    if (params.get("role") === "preview") query.set("role", "preview");
    const path = `${hub}/api/v1/events${room ? `/${encodeURIComponent(room)}` : ""}`;
    const source = new SSEClient(query.toString() ? `${path}?${query}` : path, {
      lastEventId: params.get("lastEventId") || void 0,
      retryDelay: 1e3,
      backoff: 2,
      maxRetryDelay: 3e4,
      jitter: 0.5,
      retryOnServerError: true,
      heartbeatTimeout: 45e3
      // three missed keepalives (KEEPALIVE_S=15): a dead connection
    });
    source.onerror = (event) => {
      if (source.readyState === SSEClient.CLOSED) show(connection, "closed", closedReason(event.status));
      else show(connection, "reconnecting", "reconnecting…");
    };
    source.addEventListener("meta", (event) => onHello(JSON.parse(event.data)));
    source.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    source.addEventListener("delta", (event) => onDelta(JSON.parse(event.data)));
    source.addEventListener("edit", (event) => onChange(JSON.parse(event.data), false));
    source.addEventListener("retract", (event) => onChange(JSON.parse(event.data), true));
    source.addEventListener("heartbeat", (event) => {
      const beat = JSON.parse(event.data);
      if (beat.interval_s) heartbeatS = beat.interval_s;
      controllers(beat.controllers);
    });
    source.addEventListener("presence", (event) => {
      const { controllers: count } = JSON.parse(event.data);
      if (count === 0 || controller.dataset.state !== "online") controllers(count);
    });
  }
  start();
})();

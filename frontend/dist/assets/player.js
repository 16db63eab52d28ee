(() => {
  var __defProp = Object.defineProperty;
  var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
  var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

  // src/codes.ts
  var SIZE_STEP = 1.25;
  var MIN_SIZE = -2;
  var MAX_SIZE = 3;
  var PAUSE_S = 0.5;
  var MAX_PAUSE_S = 10;
  var FLAGS = { b: "b", i: "i", u: "u", s: "s", "~": "shake", "!": "pop" };
  var CODES = /\\@|@([bius~!+\-r])|@\[(#[0-9a-fA-F]{6})\]|@\{([a-zA-Z0-9_-]{1,64})\}|@\(([^|()\n]{1,64})\|([^|()\n]{1,64})\)|@p(?:\[(\d{1,2}(?:\.\d{1,3})?)\])?/g;
  function parseCodes(source) {
    const segments = [];
    let style = {};
    let text = "";
    let end = 0;
    const flush = () => {
      if (text) segments.push({ text, style });
      text = "";
    };
    for (const match of source.matchAll(CODES)) {
      text += source.slice(end, match.index);
      end = (match.index ?? 0) + match[0].length;
      if (match[0] === "\\@") {
        text += "@";
        continue;
      }
      flush();
      const [, flag, color, image, base, reading, seconds] = match;
      if (flag === "r") style = {};
      else if (flag === "+" || flag === "-") {
        const size = (style.size ?? 0) + (flag === "+" ? 1 : -1);
        style = { ...style, size: Math.min(MAX_SIZE, Math.max(MIN_SIZE, size)) };
      } else if (flag) style = { ...style, [FLAGS[flag]]: true };
      else if (color) style = { ...style, color: color.toLowerCase() };
      else if (image) segments.push({ image, style });
      else if (base) segments.push({ text: base, style, ruby: reading });
      else segments.push({ pause: Math.min(MAX_PAUSE_S, seconds ? Number(seconds) : PAUSE_S) * 1e3 });
    }
    text += source.slice(end);
    flush();
    return segments;
  }
  function messageSegments(text, meta) {
    return meta === "ai" || meta === "fallback" ? [{ text, style: {} }] : parseCodes(text);
  }
  function plainText(segments) {
    return segments.map((segment) => "text" in segment ? segment.text : "").join("");
  }
  function layOut(segments, target, upload) {
    const steps2 = [];
    for (const segment of segments) {
      if ("pause" in segment) {
        steps2.push({ pause: segment.pause });
        continue;
      }
      const span = styledSpan(segment.style);
      target.append(span);
      if ("image" in segment) {
        steps2.push({ parent: span, child: upload(segment.image) });
        continue;
      }
      let into = span;
      if (segment.ruby !== void 0) {
        into = document.createElement("ruby");
        span.append(into);
      }
      if (segment.style.shake || segment.style.pop) {
        let index = 0;
        for (const character of segment.text) {
          const letter = document.createElement("span");
          letter.className = "letter";
          if (segment.style.shake) letter.style.animationDelay = `${-(index++ % 7) * 0.06}s`;
          letter.textContent = character;
          steps2.push({ parent: into, child: letter });
        }
      } else {
        const node = document.createTextNode("");
        into.append(node);
        let offset = 0;
        for (const character of segment.text) {
          steps2.push({ node, offset, text: character });
          offset += character.length;
        }
      }
      if (segment.ruby !== void 0) {
        const reading = document.createElement("rt");
        reading.textContent = segment.ruby;
        steps2.push({ parent: into, child: reading });
      }
    }
    return steps2;
  }
  function styledSpan(style) {
    const span = document.createElement("span");
    for (const flag of ["b", "i", "u", "s", "shake", "pop"]) if (style[flag]) span.classList.add(`fmt-${flag}`);
    if (style.color) span.style.color = style.color;
    if (style.size) span.style.fontSize = `${SIZE_STEP ** style.size}em`;
    return span;
  }
  function applyStep(step2) {
    if ("node" in step2) step2.node.appendData(step2.text);
    else if ("parent" in step2) step2.parent.appendChild(step2.child);
  }
  function undoStep(step2) {
    if ("node" in step2) step2.node.deleteData(step2.offset, step2.text.length);
    else if ("parent" in step2) step2.child.remove();
  }
  function stepRect(step2) {
    if ("node" in step2) {
      const range = document.createRange();
      range.setStart(step2.node, step2.offset);
      range.setEnd(step2.node, step2.offset + step2.text.length);
      return range.getBoundingClientRect();
    }
    if ("parent" in step2) return step2.child.getBoundingClientRect();
    return null;
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

  // src/dialogue.ts
  function hubBase(value) {
    if (!value) return "";
    try {
      const url = new URL(value);
      if (url.protocol === "http:" || url.protocol === "https:") return url.origin + url.pathname.replace(/\/+$/, "");
    } catch {
    }
    throw new Error(`?hub= must be an http(s) URL, not ${value}`);
  }
  function applyPageOptions(params2, status) {
    if (params2.get("theme")) document.documentElement.dataset.theme = params2.get("theme");
    if (params2.get("bg") === "transparent") document.documentElement.classList.add("transparent");
    if (params2.get("status") === "hide") status.hidden = true;
  }
  var STREAM_OPTIONS = {
    retryDelay: 1e3,
    backoff: 2,
    maxRetryDelay: 3e4,
    jitter: 0.5,
    retryOnServerError: true,
    heartbeatTimeout: 45e3
    // three missed keepalives (KEEPALIVE_S=15): a dead connection
  };
  function needsHub(params2) {
    return !params2.get("hub") && location.pathname.endsWith(".html");
  }
  function roomOf(params2, skip = 0) {
    const segments = location.pathname.split("/");
    const segment = segments[segments.length - 1 - skip] || "";
    if (params2.get("room") !== null) return params2.get("room");
    if (segment.endsWith(".html")) return "";
    try {
      return decodeURIComponent(segment);
    } catch {
      return segment;
    }
  }
  var COLOR = /^#[0-9a-fA-F]{6}$/;
  function profileOf(settings2, speaker, named) {
    const profiles = settings2.profiles || {};
    const name = typeof named === "string" ? named : speaker;
    return Object.prototype.hasOwnProperty.call(profiles, name) ? profiles[name] : {};
  }
  function uploadUrl(hub2, room, name, token2) {
    const query = token2 ? `?token=${encodeURIComponent(token2)}` : "";
    return `${hub2}/api/v1/rooms/${encodeURIComponent(room)}/uploads/${encodeURIComponent(name.toLowerCase())}${query}`;
  }
  function paintPlate(plate, profile2) {
    plate.style.background = profile2.color && COLOR.test(profile2.color) ? profile2.color : "";
  }
  var kinds = /* @__PURE__ */ new Map();
  function uploadKind(url) {
    let kind = kinds.get(url);
    if (!kind) {
      kind = fetch(url).then((response) => response.ok && response.headers.get("Content-Type")?.startsWith("audio/") ? "sound" : "image").catch(() => "image");
      kinds.set(url, kind);
    }
    return kind;
  }
  function uploadElement(url, name, marker) {
    const holder = document.createElement("span");
    holder.className = "upload";
    holder.dataset.kind = "pending";
    holder.dataset.url = url;
    uploadKind(url).then((kind) => {
      holder.dataset.kind = kind;
      if (kind === "sound") {
        if (marker) holder.textContent = `♪ ${name}`;
        return;
      }
      const image = document.createElement("img");
      image.className = "emote";
      image.alt = name;
      image.src = url;
      holder.append(image);
    });
    return holder;
  }

  // src/player.ts
  var params = new URLSearchParams(location.search);
  var DEFAULT_SPEED = 30;
  var CJK = /[\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Hangul}\u3000-\u303f\uff00-\uffef]/u;
  var CJK_FACTOR = 2;
  var HOLD_MS = 1500;
  var PAGE_MS = 3e3;
  var MAX_QUEUE = 100;
  var MISSED_HEARTBEATS = 3;
  var KIND_WAIT_MS = 50;
  var box = byId("dialog");
  var nameplate = byId("speaker");
  var avatar = byId("avatar");
  var quoteTag = byId("quote");
  var pageBox = byId("page");
  var textBox = byId("text");
  var idleCard = byId("idle");
  var connection = byId("connection");
  var controller = byId("controller");
  var soundButton = byId("enable-sound");
  var BLIP_GAP_MS = 55;
  var BUNDLED = ["blip", "soft", "next"];
  var Sounds = class {
    constructor() {
      __publicField(this, "context", new AudioContext());
      __publicField(this, "buffers", /* @__PURE__ */ new Map());
      // by URL
      __publicField(this, "lastBlip", 0);
      for (const name of BUNDLED) this.load(`assets/sounds/${name}.wav`);
      const blocked = () => this.context.state === "suspended";
      soundButton.hidden = !blocked();
      this.context.addEventListener("statechange", () => soundButton.hidden = !blocked());
      soundButton.addEventListener("click", (event) => {
        event.stopPropagation();
        this.context.resume();
      });
    }
    /** A sound, fetched and decoded once (null: it could not be). */
    load(url) {
      let buffer = this.buffers.get(url);
      if (!buffer) {
        buffer = fetch(url).then((response) => response.ok ? response.arrayBuffer() : Promise.reject(response.status)).then((bytes) => this.context.decodeAudioData(bytes)).catch(() => null);
        this.buffers.set(url, buffer);
      }
      return buffer;
    }
    async play(url, rate = 1) {
      const buffer = await this.load(url);
      if (!buffer || this.context.state !== "running") return;
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      source.playbackRate.value = rate;
      source.connect(this.context.destination);
      source.start();
    }
    /** A profile's voice: bundled, or an upload of the room (loaded when the line starts). */
    voice(profile2) {
      const sound = profile2.sound || "blip";
      if (sound === "none") return null;
      return BUNDLED.includes(sound) ? `assets/sounds/${sound}.wav` : uploadUrl(hub, roomId, sound, token);
    }
    prepare(profile2) {
      const voice = this.voice(profile2);
      if (voice) this.load(voice);
    }
    blip(profile2, character) {
      const now = performance.now();
      const voice = this.voice(profile2);
      if (!voice || !character.trim() || now - this.lastBlip < BLIP_GAP_MS) return;
      this.lastBlip = now;
      const variation = 1 + (Math.random() - 0.5) * 0.06;
      this.play(voice, (profile2.pitch || 1) * variation);
    }
    next() {
      this.play("assets/sounds/next.wav");
    }
    /** An `@{name}` sound of the room's uploads, where the typewriter reached its code. */
    effect(url) {
      this.play(url);
    }
  };
  var sounds = params.get("sound") === "0" || typeof AudioContext === "undefined" ? null : new Sounds();
  var queue = [];
  var current = null;
  var profile = {};
  var speed = DEFAULT_SPEED;
  var laidOut = 0;
  var steps = [];
  var next = 0;
  var pageTop = 0;
  var nextPageTop = 0;
  var typing;
  var typedAt = 0;
  var holding;
  var idling;
  var hidesWhenIdle = params.has("idle");
  var idleMs = Math.max(0, Number(params.get("idle")) || 0) * 1e3;
  var settings = {};
  var roomId = "";
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
      idleCard.hidden = hidesWhenIdle;
      return;
    }
    idleCard.hidden = true;
    box.classList.remove("hidden");
    profile = profileOf(settings, current.speaker, current.profile);
    speed = current.speed ?? speedOf(profile.speed) ?? speedOf(settings.typewriter_speed) ?? DEFAULT_SPEED;
    nameplate.textContent = current.speaker;
    nameplate.hidden = !current.speaker;
    paintPlate(nameplate, profile);
    showAvatar(profile.avatar);
    quoteTag.textContent = current.quote === void 0 ? "" : current.quote ? `quote · ${current.quote}` : "quote";
    quoteTag.hidden = current.quote === void 0;
    textBox.replaceChildren();
    turnTo(0);
    steps = [];
    next = laidOut = 0;
    box.dataset.id = current.id;
    box.dataset.state = "typing";
    sounds?.prepare(profile);
    sounds?.next();
    layOutNew();
    type();
  }
  function showAvatar(name) {
    box.classList.toggle("with-avatar", Boolean(name));
    avatar.hidden = !name;
    if (name) avatar.src = uploadUrl(hub, roomId, name, token);
    else avatar.removeAttribute("src");
  }
  function turnTo(top) {
    pageTop = top;
    textBox.style.transform = top ? `translateY(${-top}px)` : "";
  }
  function layOutNew() {
    if (!current) return;
    const upload = (name) => uploadElement(uploadUrl(hub, roomId, name, token), name, false);
    steps.push(...layOut(current.segments.slice(laidOut), textBox, upload));
    laidOut = current.segments.length;
  }
  function step() {
    const before = textBox.getBoundingClientRect();
    const taken = steps[next];
    applyStep(taken);
    const after = textBox.getBoundingClientRect();
    if (after.height - pageTop <= pageBox.clientHeight + 0.5) {
      next++;
      return true;
    }
    const top = (applied) => {
      const rect = stepRect(applied);
      return rect ? rect.top - after.top : Infinity;
    };
    const start2 = Math.min(before.height, top(taken));
    if (start2 <= pageTop) {
      next++;
      return true;
    }
    let first = next;
    while (first > 0 && top(steps[first - 1]) >= start2 - 0.5) first--;
    for (let index = next; index >= first; index--) undoStep(steps[index]);
    next = first;
    nextPageTop = start2;
    return false;
  }
  function type() {
    if (!current) return;
    if (next === steps.length) return typed();
    const taken = steps[next];
    const kind = uploadOf(taken)?.dataset.kind;
    if (kind === "pending") {
      typing = window.setTimeout(type, KIND_WAIT_MS);
      return;
    }
    if (!step()) return pageFull();
    let delay = 1e3 / speed;
    if ("pause" in taken) delay = taken.pause;
    else if (kind === "sound") sounds?.effect(uploadOf(taken)?.dataset.url);
    else {
      const character = "text" in taken ? taken.text : taken.child.textContent || "•";
      sounds?.blip(profile, character);
      if (CJK.test(character)) delay *= CJK_FACTOR;
    }
    typing = window.setTimeout(type, delay);
  }
  function uploadOf(taken) {
    return "child" in taken && taken.child.classList.contains("upload") ? taken.child : void 0;
  }
  function finish() {
    window.clearTimeout(typing);
    typing = void 0;
    while (next < steps.length) if (!step()) return pageFull();
    typed();
  }
  function pageFull() {
    typing = void 0;
    box.dataset.state = "page";
    typedAt = performance.now();
    holding = window.setTimeout(turnPage, PAGE_MS);
  }
  function turnPage() {
    window.clearTimeout(holding);
    holding = void 0;
    turnTo(nextPageTop);
    box.dataset.state = "typing";
    sounds?.next();
    type();
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
    else if (box.dataset.state === "page") turnPage();
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
      line = { id: delta.stream, speaker: delta.speaker, segments: [], stream: delta.stream, live: true };
      enqueue(line);
    }
    line.segments.push({ text: delta.content ?? "", style: {} });
    if (line === current) {
      layOutNew();
      if (typing === void 0 && box.dataset.state !== "page") {
        box.dataset.state = "typing";
        type();
      }
    }
  }
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
      const changed = plainText(segments) !== plainText(live.segments);
      if (changed) live.segments = segments;
      if (live !== current) return;
      if (changed) {
        queue.unshift(live);
        showNext();
      } else {
        box.dataset.id = live.id;
        if (typing === void 0 && box.dataset.state !== "page") typed();
      }
      return;
    }
    enqueue({
      id: String(payload.id),
      speaker: payload.speaker,
      segments,
      speed: speedOf(data.speed),
      profile: typeof data.profile === "string" ? data.profile : void 0,
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
    line.profile = typeof payload.data.profile === "string" ? payload.data.profile : void 0;
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
      byId("idle-title").textContent = "Quotes";
      return;
    }
    roomId = hello.room;
    show(connection, "live", `live · ${hello.room}`);
    if (hello.heartbeat_s) heartbeatS = hello.heartbeat_s;
    if (hello.presence) controllers(hello.presence.controllers);
    if (!settingsLoaded) {
      settingsLoaded = true;
      loadSettings(hello.room);
    }
  }
  async function loadSettings(room) {
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    try {
      const reply = await api(`${hub}/api/v1/rooms/${room}${query}`);
      byId("idle-title").textContent = reply.room.title || reply.room.id;
      applySettings(reply.room.settings || {});
    } catch {
      settingsLoaded = false;
    }
  }
  function applySettings(changed) {
    settings = changed;
    if (!params.get("theme")) {
      if (typeof settings.theme === "string") document.documentElement.dataset.theme = settings.theme;
      else delete document.documentElement.dataset.theme;
    }
  }
  function closedReason(status) {
    if (status === 401 || status === 403) return "private room: add ?token=";
    if (status === 404) return "no such room";
    return status ? `disconnected (${status})` : "disconnected";
  }
  var token = params.get("token") || "";
  var hub = "";
  function start() {
    applyPageOptions(params, byId("status"));
    idleCard.hidden = hidesWhenIdle;
    if (needsHub(params)) {
      show(connection, "closed", "set ?hub= to the hub’s address");
      byId("idle-note").textContent = "Add ?hub=https://your.hub&room=<room> to this page’s address";
      return;
    }
    try {
      hub = hubBase(params.get("hub"));
    } catch (error) {
      show(connection, "closed", error.message);
      return;
    }
    const room = roomOf(params);
    const query = new URLSearchParams(token ? { token } : {});
    if (params.get("role") === "preview") query.set("role", "preview");
    const path = `${hub}/api/v1/events${room ? `/${encodeURIComponent(room)}` : ""}`;
    const source = new SSEClient(query.toString() ? `${path}?${query}` : path, {
      ...STREAM_OPTIONS,
      lastEventId: params.get("lastEventId") || void 0
    });
    source.onerror = (event) => {
      if (source.readyState === SSEClient.CLOSED) show(connection, "closed", closedReason(event.status));
      else show(connection, "reconnecting", "reconnecting…");
    };
    source.addEventListener("meta", (event) => onHello(JSON.parse(event.data)));
    source.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    source.addEventListener("delta", (event) => onDelta(JSON.parse(event.data)));
    source.addEventListener("settings", (event) => applySettings(JSON.parse(event.data).settings || {}));
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

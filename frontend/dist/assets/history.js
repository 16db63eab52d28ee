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
  function renderMessage(source, meta, upload) {
    const shown = document.createElement("span");
    for (const step of layOut(messageSegments(source, meta), shown, upload)) applyStep(step);
    return shown;
  }
  function layOut(segments, target, upload) {
    const steps = [];
    for (const segment of segments) {
      if ("pause" in segment) {
        steps.push({ pause: segment.pause });
        continue;
      }
      const span = styledSpan(segment.style);
      target.append(span);
      if ("image" in segment) {
        steps.push({ parent: span, child: upload(segment.image) });
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
          steps.push({ parent: into, child: letter });
        }
      } else {
        const node = document.createTextNode("");
        into.append(node);
        let offset = 0;
        for (const character of segment.text) {
          steps.push({ node, offset, text: character });
          offset += character.length;
        }
      }
      if (segment.ruby !== void 0) {
        const reading = document.createElement("rt");
        reading.textContent = segment.ruby;
        steps.push({ parent: into, child: reading });
      }
    }
    return steps;
  }
  function styledSpan(style) {
    const span = document.createElement("span");
    for (const flag of ["b", "i", "u", "s", "shake", "pop"]) if (style[flag]) span.classList.add(`fmt-${flag}`);
    if (style.color) span.style.color = style.color;
    if (style.size) span.style.fontSize = `${SIZE_STEP ** style.size}em`;
    return span;
  }
  function applyStep(step) {
    if ("node" in step) step.node.appendData(step.text);
    else if ("parent" in step) step.parent.appendChild(step.child);
  }

  // src/common.ts
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === void 0 || value === null || value === false) continue;
      if (name.startsWith("on") && typeof value === "function") {
        node.addEventListener(name.slice(2), value);
      } else if (name === "class" || name.includes("-")) {
        node.setAttribute(name, value === true ? "" : String(value));
      } else {
        node[name] = value;
      }
    }
    append(node, children);
    return node;
  }
  function append(parent, children) {
    for (const child of children) {
      if (child instanceof Node) parent.append(child);
      else if (child !== null && child !== void 0 && child !== false) parent.append(String(child));
    }
  }
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
    const query2 = token2 ? `?token=${encodeURIComponent(token2)}` : "";
    return `${hub2}/api/v1/rooms/${encodeURIComponent(room)}/uploads/${encodeURIComponent(name.toLowerCase())}${query2}`;
  }
  function paintPlate(plate, profile) {
    plate.style.background = profile.color && COLOR.test(profile.color) ? profile.color : "";
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

  // src/history.ts
  var params = new URLSearchParams(location.search);
  var DEFAULT_LINES = 20;
  var MAX_LINES = 200;
  var lines = Math.min(MAX_LINES, Math.max(1, Math.floor(Number(params.get("lines"))) || DEFAULT_LINES));
  var token = params.get("token") || "";
  var query = token ? `token=${encodeURIComponent(token)}` : "";
  var log = byId("log");
  var connection = byId("connection");
  var settings = {};
  var hub = "";
  var roomId = "";
  function lineOf(payload) {
    const { data } = payload;
    if (typeof data?.message !== "string") return null;
    const text = renderMessage(data.message, payload.meta, (name) => uploadElement(uploadUrl(hub, roomId, name, token), name, true));
    text.className = "log-text";
    const profile = profileOf(settings, payload.speaker, data.profile);
    const plate = el("span", { class: "log-speaker" }, payload.speaker);
    paintPlate(plate, profile);
    const face = profile.avatar ? el("img", { class: "log-avatar", alt: "", src: uploadUrl(hub, roomId, profile.avatar, token) }) : null;
    return el("li", { class: "log-line", "data-id": payload.id }, face, payload.speaker ? plate : null, text);
  }
  function addLine(payload) {
    const line = lineOf(payload);
    if (!line) return;
    log.append(line);
    while (log.children.length > lines) log.firstElementChild?.remove();
  }
  function changeLine(payload, retracted) {
    const shown = [...log.children].find((line) => line.dataset.id === String(payload.id));
    if (!shown) return;
    const fixed = retracted ? null : lineOf(payload);
    if (fixed) shown.replaceWith(fixed);
    else shown.remove();
  }
  function show(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }
  async function start() {
    applyPageOptions(params, byId("status"));
    if (needsHub(params)) return show("closed", "set ?hub= to the hub’s address");
    try {
      hub = hubBase(params.get("hub"));
    } catch (error) {
      return show("closed", error.message);
    }
    const room = roomOf(params, location.pathname.endsWith(".html") ? 0 : 1);
    if (!room) return show("closed", "set ?room= to the room’s id");
    const path = `/${encodeURIComponent(room)}`;
    let after = "";
    try {
      const { room: record } = await api(`${hub}/api/v1/rooms${path}${query ? `?${query}` : ""}`);
      roomId = record.id;
      settings = record.settings || {};
      const reply = await api(`${hub}/api/v1/rooms/${roomId}/messages?limit=${lines}${query ? `&${query}` : ""}`);
      for (const message of [...reply.messages].reverse()) addLine(message);
      if (reply.messages.length) after = `lastEventId=${reply.messages[0].id}`;
    } catch {
    }
    const search = [query, after].filter(Boolean).join("&");
    const source = new SSEClient(`${hub}/api/v1/events${path}${search ? `?${search}` : ""}`, STREAM_OPTIONS);
    source.onerror = (event) => {
      if (source.readyState !== SSEClient.CLOSED) show("reconnecting", "reconnecting…");
      else show("closed", event.status === 401 || event.status === 403 ? "private room: add ?token=" : "disconnected");
    };
    source.addEventListener("meta", (event) => {
      const hello = JSON.parse(event.data);
      if (hello.fallback) show("fallback", `${hello.reason || "no such room"}: showing quotes`);
      else show("live", `live · ${hello.room}`);
    });
    source.addEventListener("message", (event) => addLine(JSON.parse(event.data)));
    source.addEventListener("edit", (event) => changeLine(JSON.parse(event.data), false));
    source.addEventListener("retract", (event) => changeLine(JSON.parse(event.data), true));
    source.addEventListener("settings", (event) => settings = JSON.parse(event.data).settings || {});
  }
  start();
})();

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

  // src/dialogue.ts
  function uploadUrl(hub, room, name, token) {
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${hub}/api/v1/rooms/${encodeURIComponent(room)}/uploads/${encodeURIComponent(name.toLowerCase())}${query}`;
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
  function fill(parent, ...children) {
    parent.replaceChildren();
    append(parent, children);
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
  function messageOf(error) {
    return error instanceof Error ? error.message : String(error);
  }

  // src/admin.ts
  var SIGNED_IN = "streaming-message.signed-in";
  var HISTORY = 50;
  function inputsOf(form) {
    return form.elements;
  }
  function onSubmit(id, handler) {
    const form = byId(id);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      handler(inputsOf(form), form);
    });
  }
  var accessToken = "";
  var me = null;
  var renewal;
  var rooms = [];
  var selected = location.hash.slice(1) || null;
  var controller = null;
  var following = null;
  function notify(message, kind = "error") {
    const toast = el("div", { class: `alert ${kind === "error" ? "alert-error" : "alert-success"}`, role: "alert" }, message);
    byId("toasts").append(toast);
    window.setTimeout(() => toast.remove(), kind === "error" ? 8e3 : 3e3);
  }
  async function attempt(action, done) {
    try {
      await action();
      if (done) notify(done, "success");
    } catch (error) {
      notify(messageOf(error));
    }
  }
  function begin(session) {
    accessToken = session.access_token;
    me = session.user;
    localStorage.setItem(SIGNED_IN, "1");
    window.clearTimeout(renewal);
    renewal = window.setTimeout(renew, session.expires_in * 800);
  }
  async function renew() {
    const refresh = () => api("/api/v1/auth/refresh", { method: "POST" });
    try {
      begin(navigator.locks ? await navigator.locks.request("streaming-message.refresh", refresh) : await refresh());
      if (controller?.readyState === SSEClient.CLOSED) follow();
      return true;
    } catch (error) {
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
        signOut("Your session has ended: please log in again.");
      } else {
        renewal = window.setTimeout(renew, 1e4);
        notify(`Could not renew the session: ${messageOf(error)}`);
      }
      return false;
    }
  }
  async function call(url, options = {}) {
    try {
      return await api(url, { ...options, token: accessToken });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401) || !await renew()) throw error;
      return api(url, { ...options, token: accessToken });
    }
  }
  function signOut(reason) {
    controller?.close();
    controller = null;
    following = null;
    accessToken = "";
    me = null;
    localStorage.removeItem(SIGNED_IN);
    window.clearTimeout(renewal);
    byId("app-view").hidden = true;
    byId("login-view").hidden = false;
    const error = byId("login-error");
    error.textContent = reason || "";
    error.hidden = !reason;
  }
  function showApp() {
    if (!me) return;
    byId("login-view").hidden = true;
    byId("app-view").hidden = false;
    byId("who").textContent = `${me.username} · ${me.role}`;
    byId("users-panel").hidden = me.role !== "admin";
    attempt(loadRooms);
    attempt(loadTokens);
    if (me.role === "admin") attempt(loadUsers);
  }
  onSubmit("login", async ({ username, password }, form) => {
    try {
      begin(await api("/api/v1/auth/login", { method: "POST", body: { username: username.value, password: password.value } }));
      form.reset();
      showApp();
    } catch (error) {
      signOut(messageOf(error));
    }
  });
  byId("logout").addEventListener("click", async () => {
    await api("/api/v1/auth/logout", { method: "POST", token: accessToken }).catch(() => void 0);
    signOut();
  });
  async function loadRooms() {
    const all = [];
    let after = null;
    do {
      const query = after === null ? "" : `&after=${encodeURIComponent(after)}`;
      const page = await call(`/api/v1/rooms?limit=1000${query}`);
      all.push(...page.rooms);
      after = page.next;
    } while (after !== null);
    rooms = all.filter((room) => me?.role === "admin" || room.owner === me?.id);
    if (!rooms.some((room) => room.id === selected)) selected = rooms[0]?.id ?? null;
    renderRooms();
    select(selected);
  }
  function renderRooms() {
    fill(
      byId("rooms"),
      ...rooms.map(
        (room) => el(
          "li",
          {},
          el(
            "button",
            { type: "button", class: room.id === selected ? "menu-active" : "", "data-room": room.id, onclick: () => select(room.id) },
            el("span", { class: "font-mono" }, room.id),
            room.title && el("span", { class: "truncate opacity-70" }, room.title),
            room.private && el("span", { class: "badge badge-sm badge-outline" }, "private")
          )
        )
      )
    );
    fill(
      byId("token-rooms"),
      el("option", { value: "*" }, "all my rooms"),
      ...rooms.map((room) => el("option", { value: room.id, selected: room.id === selected }, room.id))
    );
  }
  function select(roomId) {
    selected = roomId;
    const room = rooms.find((candidate) => candidate.id === roomId);
    byId("room-panel").hidden = !room;
    if (!room) return follow();
    window.history.replaceState(null, "", `#${room.id}`);
    for (const item of byId("rooms").querySelectorAll("button")) {
      item.classList.toggle("menu-active", item.dataset.room === room.id);
    }
    byId("room-title").textContent = room.title ? `${room.id} · ${room.title}` : room.id;
    byId("player-link").href = `/${room.id}`;
    const settings = inputsOf(byId("settings"));
    settings.title.value = room.title;
    settings.private.checked = room.private;
    settings.history_size.value = room.history_size === null ? "" : String(room.history_size);
    settings.typewriter_speed.value = room.settings.typewriter_speed ? String(room.settings.typewriter_speed) : "";
    settings.theme.value = room.settings.theme || "";
    if (room.subscribers) showPresence(room.subscribers);
    profilesPanel(room);
    if (following !== room.id) follow();
  }
  onSubmit("create-room", ({ id, title, private: hidden }, form) => {
    attempt(async () => {
      const { room } = await call("/api/v1/rooms", {
        method: "POST",
        body: { id: id.value, title: title.value, private: hidden.checked }
      });
      form.reset();
      selected = room.id;
      await loadRooms();
      notify(`Room ${room.id} created`, "success");
    });
  });
  onSubmit("settings", ({ title, private: hidden, history_size, typewriter_speed, theme }) => {
    const number = (input) => input.value ? Number(input.value) : null;
    attempt(async () => {
      await call(`/api/v1/rooms/${selected}`, {
        method: "PATCH",
        body: {
          title: title.value,
          private: hidden.checked,
          history_size: number(history_size),
          settings: { typewriter_speed: number(typewriter_speed), theme: theme.value || null }
        }
      });
      await loadRooms();
    }, "Settings saved");
  });
  byId("delete-room").addEventListener("click", () => {
    const roomId = selected;
    if (!roomId || !window.confirm(`Delete room ${roomId} and its history? Its players will be disconnected.`)) return;
    attempt(async () => {
      await call(`/api/v1/rooms/${roomId}`, { method: "DELETE" });
      await loadRooms();
    }, `Room ${roomId} deleted`);
  });
  var BUNDLED_SOUNDS = ["blip", "soft"];
  var MAX_SPEAKER = 64;
  var roomUploads = [];
  function profilesPanel(room, keepEdits = false) {
    attempt(async () => {
      const { uploads } = await call(`/api/v1/rooms/${room.id}/uploads`);
      if (selected !== room.id) return;
      const profiles = keepEdits ? readProfiles() : room.settings.profiles || {};
      roomUploads = uploads;
      fill(
        byId("uploads"),
        ...uploads.map(
          (upload) => el(
            "li",
            { class: "badge badge-lg gap-2 py-4" },
            isImage(upload) ? el("img", { class: "h-6 w-6 rounded object-cover", src: upload.url, alt: "" }) : "♪",
            el("span", { class: "font-mono" }, upload.name),
            el("button", { type: "button", class: "btn btn-ghost btn-xs", "aria-label": `delete ${upload.name}`, onclick: () => deleteUpload(upload) }, "✕")
          )
        )
      );
      fill(byId("profile-rows"), ...Object.entries(profiles).map(([name, profile]) => profileRow(name, profile)));
    });
  }
  function isImage(upload) {
    return upload.type.startsWith("image/");
  }
  function reloadProfiles() {
    const room = rooms.find((candidate) => candidate.id === selected);
    if (room) profilesPanel(room, true);
  }
  function field(label, ...controls) {
    return el("label", { class: "grid min-w-0 gap-1 text-xs" }, el("span", { class: "opacity-70" }, label), ...controls);
  }
  function choice(name, value, choices) {
    if (value && !choices.some(([known]) => known === value)) choices.push([value, `${value} (missing)`]);
    return el(
      "select",
      { class: "select select-sm w-full min-w-0", name },
      ...choices.map(([known, text]) => el("option", { value: known, selected: known === value }, text))
    );
  }
  function numberInput(name, value, min, max, placeholder) {
    return el("input", { class: "input input-sm w-full min-w-0", name, type: "number", min, max, step: "any", placeholder, value: value ?? "" });
  }
  function profileRow(name, profile) {
    const color = el("input", { class: "h-8 w-12 cursor-pointer peer-not-checked:opacity-30", name: "color", type: "color", "aria-label": "colour", value: profile.color || "#2a9d8f" });
    const colored = el("input", { class: "peer checkbox checkbox-sm", name: "colored", type: "checkbox", "aria-label": "use a colour", checked: Boolean(profile.color) });
    color.addEventListener("input", () => colored.checked = true);
    const images = roomUploads.filter(isImage).map((upload) => [upload.name, upload.name]);
    const sounds = roomUploads.filter((upload) => !isImage(upload)).map((upload) => [upload.name, `♪ ${upload.name}`]);
    const row = el(
      "li",
      { class: "profile grid grid-cols-2 items-end gap-2 rounded-box border border-base-300 p-2 sm:grid-cols-4" },
      el(
        "label",
        { class: "col-span-2 grid min-w-0 gap-1 text-xs" },
        el("span", { class: "opacity-70" }, "Speaker"),
        el("input", { class: "input input-sm w-full min-w-0", name: "speaker", value: name, maxLength: MAX_SPEAKER, required: true, placeholder: "speaker name" })
      ),
      el("div", { class: "grid min-w-0 gap-1 text-xs" }, el("span", { class: "opacity-70" }, "Colour"), el("span", { class: "flex h-8 items-center gap-2" }, colored, color)),
      field("Avatar", choice("avatar", profile.avatar || "", [["", "none"], ...images])),
      field("Speed (chars/s)", numberInput("speed", profile.speed, 1, 1e3, "room’s")),
      field("Sound", choice("sound", profile.sound || "", [["", "default (blip)"], ...BUNDLED_SOUNDS.map((sound) => [sound, sound]), ["none", "none (silent)"], ...sounds])),
      field("Pitch", numberInput("pitch", profile.pitch, 0.25, 4, "1")),
      el("button", { class: "btn btn-sm btn-ghost text-error self-end", type: "button", onclick: () => row.remove() }, "Remove")
    );
    return row;
  }
  byId("add-profile").addEventListener("click", () => {
    const row = profileRow("", {});
    byId("profile-rows").append(row);
    row.querySelector("input")?.focus();
  });
  function readProfiles() {
    const profiles = {};
    for (const row of byId("profile-rows").children) {
      const value = (name) => row.querySelector(`[name=${name}]`).value;
      const profile = {};
      if (row.querySelector("[name=colored]").checked) profile.color = value("color");
      if (value("avatar")) profile.avatar = value("avatar");
      if (value("speed")) profile.speed = Number(value("speed"));
      if (value("sound")) profile.sound = value("sound");
      if (value("pitch")) profile.pitch = Number(value("pitch"));
      profiles[value("speaker")] = profile;
    }
    return profiles;
  }
  onSubmit("profiles", () => {
    const names = [...byId("profile-rows").querySelectorAll("[name=speaker]")].map((input) => input.value);
    const twice = names.find((name, index) => names.indexOf(name) !== index);
    if (twice !== void 0) return notify(`Two profiles for ${twice}: a speaker has one`);
    const profiles = readProfiles();
    attempt(async () => {
      await call(`/api/v1/rooms/${selected}`, { method: "PATCH", body: { settings: { profiles: names.length ? profiles : null } } });
      await loadRooms();
    }, "Profiles saved");
  });
  onSubmit("upload", ({ name, file }, form) => {
    const chosen = file.files?.[0];
    if (!chosen) return;
    attempt(async () => {
      const send = () => fetch(`/api/v1/rooms/${selected}/uploads/${encodeURIComponent(name.value)}`, {
        method: "PUT",
        headers: { Authorization: `Bearer ${accessToken}` },
        body: chosen
      });
      let response = await send();
      if (response.status === 401 && await renew()) response = await send();
      const reply = await response.json().catch(() => null);
      if (!response.ok) throw new ApiError(response.status, reply?.msg || `${response.status} ${response.statusText}`);
      form.reset();
      reloadProfiles();
    }, "Uploaded");
  });
  function deleteUpload(upload) {
    attempt(async () => {
      await call(`/api/v1/rooms/${selected}/uploads/${upload.name}`, { method: "DELETE" });
      reloadProfiles();
    }, `${upload.name} deleted`);
  }
  function controllerState(state, text) {
    const badge = byId("controller-state");
    badge.dataset.state = state;
    badge.className = `badge ${state === "live" ? "badge-success" : state === "reconnecting" ? "badge-warning" : "badge-error"}`;
    badge.textContent = text;
  }
  function showPresence({ players, controllers }) {
    byId("presence").textContent = `${players} player${players === 1 ? "" : "s"} · ${controllers} controller${controllers === 1 ? "" : "s"}`;
  }
  function historyEntry(message) {
    const text = message.data?.message;
    const shown = el("span", { class: "message min-w-0 wrap-anywhere" });
    if (typeof text === "string") shown.append(renderMessage(text, message.meta, (name) => uploadElement(uploadUrl("", message.room, name, ""), name, true)));
    else shown.textContent = JSON.stringify(message.data);
    const entry = el(
      "li",
      { class: "flex flex-wrap items-baseline gap-x-2 border-b border-base-300 py-1", "data-id": message.id },
      el("span", { class: "font-mono text-xs opacity-60" }, `#${message.id} ${new Date(message.time).toLocaleTimeString()}`),
      el("b", {}, `${message.speaker}:`),
      shown,
      message.edited && el("span", { class: "text-xs opacity-60" }, "(edited)"),
      el(
        "span",
        { class: "ml-auto flex gap-1" },
        typeof text === "string" && el("button", { class: "btn btn-ghost btn-xs", type: "button", onclick: () => editEntry(entry, message, text) }, "Edit"),
        el("button", { class: "btn btn-ghost btn-xs text-error", type: "button", onclick: () => retract(message) }, "Retract")
      )
    );
    return entry;
  }
  function editEntry(entry, message, text) {
    const input = el("input", { class: "input input-xs min-w-0 flex-1", name: "message", value: text, required: true });
    const form = el(
      "form",
      {
        class: "flex w-full gap-1",
        onsubmit: (event) => {
          event.preventDefault();
          attempt(async () => {
            const { event: edited } = await call(`/api/v1/rooms/${message.room}/messages/${message.id}`, {
              method: "PATCH",
              body: { data: { ...message.data, message: input.value } }
            });
            showEdit(edited);
          });
        }
      },
      input,
      el("button", { class: "btn btn-primary btn-xs", type: "submit" }, "Save"),
      el("button", { class: "btn btn-ghost btn-xs", type: "button", onclick: () => entry.replaceWith(historyEntry(message)) }, "Cancel")
    );
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") entry.replaceWith(historyEntry(message));
    });
    entry.replaceChildren(entry.children[0], entry.children[1], form);
    input.focus();
  }
  function retract(message) {
    if (!window.confirm(`Retract message #${message.id}? Players take it off the screen and history leaves it out.`)) return;
    attempt(async () => {
      await call(`/api/v1/rooms/${message.room}/messages/${message.id}`, { method: "DELETE" });
      showRetract(message.id);
    });
  }
  function showEdit(message) {
    byId("history").querySelector(`li[data-id="${message.id}"]`)?.replaceWith(historyEntry(message));
  }
  function showRetract(id) {
    byId("history").querySelector(`li[data-id="${id}"]`)?.remove();
  }
  function follow() {
    controller?.close();
    controller = null;
    const history = byId("history");
    history.replaceChildren();
    const room = rooms.find((candidate) => candidate.id === selected);
    following = room?.id ?? null;
    if (!room) return;
    controllerState("reconnecting", "connecting…");
    call(`/api/v1/rooms/${room.id}/messages?limit=${HISTORY}`).then(
      ({ messages }) => {
        if (following !== room.id || controller) return;
        history.replaceChildren(...messages.map(historyEntry));
        preview(room, messages[0]?.id);
        control(room, String(messages[0]?.id ?? 0));
      },
      (error) => {
        if (following !== room.id || controller) return;
        notify(`Could not read the recent messages: ${messageOf(error)}`);
        preview(room);
        control(room, String(room.last_id));
      }
    );
  }
  function preview(room, newest) {
    const query = new URLSearchParams({ role: "preview" });
    if (newest) query.set("lastEventId", String(newest - 1));
    byId("preview").src = `/${room.id}?${query}`;
  }
  function control(room, lastEventId) {
    const history = byId("history");
    const source = new SSEClient(`/api/v1/events/${room.id}?role=controller`, {
      lastEventId,
      retryDelay: 1e3,
      backoff: 2,
      maxRetryDelay: 3e4,
      jitter: 0.5,
      retryOnServerError: true
    });
    controller = source;
    source.onopen = () => controllerState("live", "controller online");
    source.onerror = (event) => {
      if (source.readyState !== SSEClient.CLOSED) controllerState("reconnecting", "reconnecting…");
      else if (event.status === 401 || event.status === 403) controllerState("closed", "not allowed to control this room");
      else controllerState("closed", "disconnected");
    };
    source.addEventListener("meta", (event) => {
      const hello = JSON.parse(event.data);
      if (hello.presence) showPresence(hello.presence);
    });
    source.addEventListener("presence", (event) => showPresence(JSON.parse(event.data)));
    source.addEventListener("message", (event) => {
      history.prepend(historyEntry(JSON.parse(event.data)));
      history.children[HISTORY]?.remove();
    });
    source.addEventListener("edit", (event) => showEdit(JSON.parse(event.data)));
    source.addEventListener("retract", (event) => showRetract(JSON.parse(event.data).id));
    source.addEventListener("deleted", () => attempt(loadRooms));
  }
  onSubmit("send", ({ speaker, message, speed, meta }) => {
    const data = { message: message.value };
    if (speed.value) data.speed = Number(speed.value);
    attempt(async () => {
      await call("/api/v1/send", {
        method: "POST",
        body: { room: selected, speaker: speaker.value, data, meta: meta.value || null }
      });
      message.value = "";
      message.focus();
    });
  });
  inputsOf(byId("send")).message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      byId("send").requestSubmit();
    }
  });
  onSubmit("ai", ({ speaker, prompt }) => {
    const roomId = selected;
    attempt(async () => {
      await call(`/api/v1/rooms/${roomId}/ai`, { method: "POST", body: { speaker: speaker.value, prompt: prompt.value } });
      prompt.value = "";
    }, `The AI is answering in ${roomId}`);
  });
  async function loadTokens() {
    const { tokens } = await call("/api/v1/tokens");
    fill(
      byId("tokens"),
      ...tokens.map(
        (token) => el(
          "tr",
          {},
          el("td", {}, token.name),
          el("td", {}, token.rooms === "*" ? "all my rooms" : token.rooms.join(", ")),
          el("td", {}, token.rights.join(", ")),
          el("td", {}, token.expires_at ? new Date(token.expires_at).toLocaleString() : "never"),
          el(
            "td",
            {},
            el("button", { class: "btn btn-xs btn-outline btn-error", type: "button", onclick: () => revoke(token) }, "Revoke")
          )
        )
      )
    );
  }
  function revoke(token) {
    if (!window.confirm(`Revoke the token ${token.name}? Scripts using it will stop working.`)) return;
    attempt(async () => {
      await call(`/api/v1/tokens/${token.id}`, { method: "DELETE" });
      await loadTokens();
    }, `Token ${token.name} revoked`);
  }
  onSubmit("create-token", ({ name, rooms: scope, publish, subscribe, days }) => {
    const rights = [publish.checked && "publish", subscribe.checked && "subscribe"].filter(Boolean);
    const body = { name: name.value, rooms: scope.value === "*" ? "*" : [scope.value], rights };
    if (days.value) body.expires_in = Number(days.value) * 86400;
    attempt(async () => {
      const { token } = await call("/api/v1/tokens", { method: "POST", body });
      byId("secret").textContent = token;
      byId("secret-box").hidden = false;
      name.value = "";
      await loadTokens();
    });
  });
  byId("copy").addEventListener("click", () => {
    const secret = byId("secret");
    if (!navigator.clipboard) {
      window.getSelection()?.selectAllChildren(secret);
      return;
    }
    attempt(() => navigator.clipboard.writeText(secret.textContent || ""), "Copied");
  });
  async function loadUsers() {
    const { users } = await call("/api/v1/users");
    fill(
      byId("users"),
      ...users.map(
        (user) => el(
          "li",
          { class: "flex flex-wrap items-center gap-2 py-2" },
          el("span", { class: "flex-1 font-medium" }, user.username),
          el("span", { class: `badge badge-sm ${user.role === "admin" ? "badge-primary" : "badge-ghost"}` }, user.role),
          user.disabled && el("span", { class: "badge badge-sm badge-warning" }, "disabled"),
          ...user.id === me?.id ? [] : [
            userButton(user, user.disabled ? "Enable" : "Disable", { disabled: !user.disabled }),
            userButton(user, user.role === "admin" ? "Make user" : "Make admin", {
              role: user.role === "admin" ? "user" : "admin"
            }),
            el("button", { class: "btn btn-xs btn-outline btn-error", type: "button", onclick: () => removeUser(user) }, "Delete")
          ]
        )
      )
    );
  }
  function userButton(user, label, changes) {
    const update = () => attempt(async () => {
      await call(`/api/v1/users/${user.id}`, { method: "PATCH", body: changes });
      await loadUsers();
    }, `${user.username} updated`);
    return el("button", { class: "btn btn-xs", type: "button", onclick: update }, label);
  }
  function removeUser(user) {
    if (!window.confirm(`Delete the user ${user.username}, with their tokens and sessions?`)) return;
    attempt(async () => {
      await call(`/api/v1/users/${user.id}`, { method: "DELETE" });
      await loadUsers();
    }, `${user.username} deleted`);
  }
  onSubmit("create-user", ({ username, password, role }, form) => {
    attempt(async () => {
      await call("/api/v1/users", { method: "POST", body: { username: username.value, password: password.value, role: role.value } });
      form.reset();
      await loadUsers();
    }, `User ${username.value} created`);
  });
  (async () => {
    if (localStorage.getItem(SIGNED_IN) && await renew()) showApp();
    else signOut();
  })();
})();

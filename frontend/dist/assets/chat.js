(() => {
  var __defProp = Object.defineProperty;
  var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
  var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

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

  // src/chat.ts
  var STORE = "streaming-message.chat";
  var FOLLOWED = "streaming-message.chat.followed";
  var CUT_NOTE = "\n\n[This answer was cut off before its end.]";
  var log = byId("log");
  var prompt = byId("prompt");
  var sendButton = byId("send");
  var stopButton = byId("stop");
  var demoBadge = byId("demo");
  var messages = load();
  var running = null;
  function load() {
    try {
      const stored = JSON.parse(localStorage.getItem(STORE) || "[]");
      return Array.isArray(stored) ? stored : [];
    } catch {
      return [];
    }
  }
  function save() {
    localStorage.setItem(STORE, JSON.stringify(messages));
  }
  function render() {
    const last = messages[messages.length - 1];
    fill(
      log,
      messages.length === 0 && el("p", { class: "mt-16 text-center text-base-content/60" }, "Ask anything."),
      ...messages.map((message) => {
        const bubble = el(
          "div",
          {
            class: `chat-bubble whitespace-pre-wrap break-words ${message.role === "user" ? "chat-bubble-primary" : message.failed ? "chat-bubble-error" : ""}`
          },
          message.content || (message === running?.answer ? "…" : "")
        );
        const footer = message.role === "assistant" && el(
          "div",
          { class: "chat-footer mt-1 flex items-center gap-2 opacity-80" },
          message.note && el("span", { class: "note" }, message.note),
          message.model && el("span", { class: "text-xs" }, message.model),
          message === last && !running && el("button", { class: "btn btn-ghost btn-xs", type: "button", onclick: regenerate }, "Regenerate")
        );
        return el("div", { class: `chat ${message.role === "user" ? "chat-end" : "chat-start"}` }, bubble, footer);
      })
    );
    log.scrollTop = log.scrollHeight;
    const answered = messages.filter((message) => message.model);
    demoBadge.hidden = answered[answered.length - 1]?.model !== "demo";
    sendButton.hidden = running !== null;
    stopButton.hidden = running === null;
  }
  async function ask() {
    const conversation = messages.filter((m) => !m.failed).map(({ role, content, cut }) => ({ role, content: cut ? content + CUT_NOTE : content }));
    const answer = { role: "assistant", content: "", pending: true };
    messages.push(answer);
    running = { answer };
    save();
    render();
    let uid;
    try {
      ({ uid } = await api("/api/v1/chat", { method: "POST", body: { messages: conversation } }));
    } catch (error) {
      return end(answer, messageOf(error), "failed");
    }
    if (running?.answer !== answer) return cancel(uid);
    follow(answer, { uid, lastEventId: "" });
  }
  function follow(answer, followed) {
    const { uid } = followed;
    sessionStorage.setItem(FOLLOWED, JSON.stringify(followed));
    const source = new SSEClient(`/api/v1/chat/${encodeURIComponent(uid)}/events`, {
      lastEventId: followed.lastEventId,
      retryDelay: 1e3,
      backoff: 2,
      maxRetryDelay: 1e4,
      maxRetries: 5
    });
    running = { answer, uid, source };
    source.addEventListener("delta", (event) => {
      answer.content += JSON.parse(event.data).content;
      const bubble = log.querySelector(".chat:last-child .chat-bubble");
      if (bubble) bubble.textContent = answer.content;
      log.scrollTop = log.scrollHeight;
      save();
      sessionStorage.setItem(FOLLOWED, JSON.stringify({ uid, lastEventId: event.lastEventId }));
    });
    source.addEventListener("done", (event) => {
      answer.model = JSON.parse(event.data).model;
      end(answer);
    });
    source.addEventListener("error", (event) => {
      const { data, status } = event;
      if (data !== void 0) end(answer, JSON.parse(data).msg, "failed");
      else if (status === 404) end(answer, "interrupted", "cut");
      else if (source.readyState === SSEClient.CLOSED) end(answer, "Lost the connection to the server", "failed");
    });
  }
  function end(answer, note, outcome) {
    running?.source?.close();
    running = null;
    sessionStorage.removeItem(FOLLOWED);
    answer.note = note;
    answer.failed = outcome === "failed" || void 0;
    answer.cut = outcome === "cut" || void 0;
    answer.pending = void 0;
    save();
    render();
  }
  function resume() {
    const last = messages[messages.length - 1];
    if (!last?.pending) return;
    let followed = null;
    try {
      followed = JSON.parse(sessionStorage.getItem(FOLLOWED) || "null");
    } catch {
    }
    if (followed?.uid) follow(last, followed);
    else end(last, "interrupted", "cut");
  }
  function cancel(uid) {
    api(`/api/v1/chat/${encodeURIComponent(uid)}`, { method: "DELETE" }).catch(() => void 0);
  }
  function stop() {
    if (!running) return;
    const { uid, answer } = running;
    end(answer, "stopped", "cut");
    if (uid) cancel(uid);
  }
  function regenerate() {
    if (messages[messages.length - 1]?.role === "assistant") messages.pop();
    ask();
  }
  byId("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || running) return;
    messages.push({ role: "user", content: text });
    prompt.value = "";
    ask();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      byId("composer").requestSubmit();
    }
  });
  stopButton.addEventListener("click", stop);
  byId("new").addEventListener("click", () => {
    stop();
    messages = [];
    save();
    render();
  });
  resume();
  render();
})();

// Plain player: lists the room's live messages as text (never as HTML). An AI answer
// (`event: delta`, keyed by `stream`) grows in place, then its stored message replaces it.
(function () {
  var room = decodeURIComponent(location.pathname.slice(1)) || "";
  var url = room ? "/api/v1/events/" + encodeURIComponent(room) : "/api/v1/events";
  var list = document.getElementById("messages");
  var state = document.getElementById("state");
  var live = {}; // stream key -> text node of the answer being typed
  document.getElementById("room").textContent = room || "(default)";

  function show(speakerName, text) {
    var item = document.createElement("li");
    var speaker = document.createElement("b");
    speaker.textContent = speakerName + ": ";
    item.appendChild(speaker);
    var body = document.createTextNode(text);
    item.appendChild(body);
    list.appendChild(item);
    return body;
  }

  function drop(stream) {
    var body = live[stream];
    if (body) list.removeChild(body.parentNode);
    delete live[stream];
  }

  var source = new EventSource(url);
  source.onopen = function () { state.textContent = "connected"; };
  source.onerror = function () { state.textContent = "reconnecting…"; };
  source.onmessage = function (event) {
    var message = JSON.parse(event.data);
    var data = message.data || {};
    if (data.stream) drop(data.stream);
    var text = data.message;
    show(message.speaker, typeof text === "string" ? text : JSON.stringify(message.data));
  };
  source.addEventListener("delta", function (event) {
    var delta = JSON.parse(event.data);
    if (delta.error) return drop(delta.stream);
    if (!live[delta.stream]) live[delta.stream] = show(delta.speaker, "");
    live[delta.stream].appendData(delta.content);
  });
})();

// Plain player: lists the room's live messages as text (never as HTML).
(function () {
  var room = decodeURIComponent(location.pathname.slice(1)) || "";
  var url = room ? "/api/v1/events/" + encodeURIComponent(room) : "/api/v1/events";
  var list = document.getElementById("messages");
  var state = document.getElementById("state");
  document.getElementById("room").textContent = room || "(default)";
  var source = new EventSource(url);
  source.onopen = function () { state.textContent = "connected"; };
  source.onerror = function () { state.textContent = "reconnecting…"; };
  source.onmessage = function (event) {
    var message = JSON.parse(event.data);
    var item = document.createElement("li");
    var speaker = document.createElement("b");
    speaker.textContent = message.speaker + ": ";
    item.appendChild(speaker);
    var text = message.data && message.data.message;
    item.appendChild(document.createTextNode(typeof text === "string" ? text : JSON.stringify(message.data)));
    list.appendChild(item);
  };
})();

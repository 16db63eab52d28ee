// Plain admin: publishes with POST /api/v1/send and shows the server's reply.
(function () {
  var form = document.getElementById("send");
  var result = document.getElementById("result");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var body = {
      speaker: form.speaker.value,
      data: { message: form.message.value },
      meta: "message"
    };
    if (form.room.value) body.room = form.room.value;
    fetch("/api/v1/send", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + form.token.value },
      body: JSON.stringify(body)
    })
      .then(function (response) { return response.json(); })
      .then(function (reply) { result.textContent = reply.msg + (reply.id ? " (id " + reply.id + ")" : ""); })
      .catch(function (error) { result.textContent = String(error); });
  });
})();

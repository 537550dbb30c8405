// The chat page: keeps the conversation here, sends all of it with each turn to the server's
// OpenAI-style endpoint, and shows the reply as its server-sent events arrive.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];
let model = null;
let controller = null;

function setState(state, status = "") {
  document.body.dataset.state = state;
  $("send").disabled = state !== "idle";
  $("stop").disabled = state !== "generating";
  $("status").textContent = status;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

async function loadModel() {
  try {
    const card = (await (await fetch("/v1/models")).json()).data[0];
    model = card.id;
    $("model").textContent = `${card.id} (context ${card.context_length} tokens)`;
    if (card.note) {
      $("note").textContent = card.note;
      $("note").hidden = false;
    }
    setState("idle");
  } catch (e) {
    setState("error", `cannot reach the server: ${e}`);
  }
}

// Yields the parsed JSON of each `data:` event of a server-sent event stream.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function settings() {
  const body = {model, messages: history, stream: true};
  const temperature = parseFloat($("temperature").value);
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (!Number.isNaN(temperature)) body.temperature = temperature;
  if (!Number.isNaN(maxTokens)) body.max_completion_tokens = maxTokens;
  return body;
}

async function send(text) {
  history.push({role: "user", content: text});
  addMessage("user", text);
  const div = addMessage("assistant", "");
  controller = new AbortController();
  setState("generating");
  let reply = "";
  let status = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(settings()), signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json();
      throw new Error(err.error ? err.error.message : response.statusText);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.delta && choice.delta.content) {
        reply += choice.delta.content;
        div.textContent = reply;
      }
      if (choice && choice.finish_reason === "length") status = "reply cut at the length limit";
    }
  } catch (e) {
    if (e.name === "AbortError") {
      div.classList.add("stopped");
    } else {
      status = String(e.message || e);
    }
  }
  controller = null;
  if (reply) {
    history.push({role: "assistant", content: reply});
  } else {
    history.pop();  // nothing came back: the message can be sent again
  }
  setState("idle", status);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value;
  if (!text.trim() || document.body.dataset.state !== "idle") return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
  setState(model ? "idle" : "loading");
});

loadModel();

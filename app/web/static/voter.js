// Votes through the JSON API instead of the plain form, and says what happened without a
// reload. The page works without this module: the form posts to /p/<id>.
import { follow, showConnection } from "./live.js";

const main = document.querySelector("main[data-poll-id]");
const form = document.getElementById("vote");
const message = document.getElementById("message");
const messages = JSON.parse(document.getElementById("messages").textContent);
const pollId = main.dataset.pollId;

function outcome(status, body) {
  if (status === 200) return messages.ok;
  if (body && messages[body.type]) return messages[body.type];
  if (status === 422) {
    const noVoter = body?.detail?.some((d) => d.loc.includes("x-voter-id"));
    return noVoter ? messages.no_cookie : messages.unknown_option;
  }
  return messages.unavailable;
}

function show(text) {
  message.textContent = text;
  message.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const optionId = event.submitter ? event.submitter.value : "";
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const response = await fetch(`/api/v1/polls/${encodeURIComponent(pollId)}/vote`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ option_id: optionId }),
      credentials: "same-origin",
    });
    const body = await response.json().catch(() => null);
    show(outcome(response.status, body));
  } catch {
    show(messages.unavailable);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
});

// Live: the poll's stream says when it closes (the final state) and, for hidden results,
// when they are revealed (the stream is refused until then, so the poll's state is looked
// at every 3 s meanwhile). The results are shown once they may be seen.
const api = `/api/v1/polls/${encodeURIComponent(pollId)}`;
const closedNote = document.getElementById("closed");

function showClosed() {
  closedNote.hidden = false;
  form.querySelectorAll("button").forEach((b) => { b.disabled = true; });
}

function showResults(results) {
  const list = document.getElementById("results");
  const total = results.total_votes;
  list.replaceChildren(...results.options.map((option) => {
    const item = document.createElement("li");
    const share = total ? Math.round((100 * option.count) / total) : 0;
    item.textContent = `${option.label}: ${option.count} (${share}%)`;
    return item;
  }));
  list.hidden = false;
}

function onState(results) {
  showResults(results);
  if (results.final) showClosed();
  return results.final;
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function untilVisible() {
  for (;;) {
    const poll = await fetch(api, { credentials: "same-origin" });
    if (!poll.ok) return;
    const state = await poll.json();
    if (state.state === "closed") showClosed();
    if (state.results_visible) return;
    showConnection("live");
    await pause(3000);
  }
}

if (closedNote.hidden) follow(`${api}/stream`, { onState, onStatus: showConnection, refused: untilVisible });

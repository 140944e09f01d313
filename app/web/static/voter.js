// Votes through the JSON API instead of the plain form, and says what happened without a
// reload. The page works without this module: the form posts to /p/<id>.
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

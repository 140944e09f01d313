// The phone's page of an event: follows the event's stream and shows each question the
// presenter moves to without a reload; answers through the vote API; shows what this voter
// chose (from the voter's own record on the node, so it survives a reload), the choices
// left, that the question closed (live, from the question's stream), and its results after
// answering when the organiser lets the audience see them.
import { follow, showConnection } from "./live.js";
import { followEvent, getJson, ownRecord, paths } from "./event-api.js";
import { el, resultsView, totalLine } from "./results-view.js";

const main = document.querySelector("main[data-event-id]");
const eventId = main.dataset.eventId;
const area = document.getElementById("question-area");
let question = null; // the follow() of the current question's stream
let shown = 0; // bumps with every question: late answers for an old one are dropped
let onSummary = () => {}; // the shown question's handler of its summary in the event's state
let revealed = null; // resolves the wait for a reveal

const MESSAGES = {
  ok: "Your answer counted",
  already_voted: "You already answered this question",
  poll_closed: "This question is closed",
  unavailable: "Your answer could not be taken just now: please try again",
};

const statuses = { event: "live", poll: "live" };
const status = (which) => (value) => {
  statuses[which] = value;
  showConnection(Object.values(statuses).includes("reconnecting") ? "reconnecting" : "live");
};

function outcome(code, body) {
  if (code === 200) return MESSAGES.ok;
  if (body && MESSAGES[body.type]) return MESSAGES[body.type];
  if (code === 422 && Array.isArray(body?.detail)) return body.detail.map((d) => d.msg).join("; ");
  return MESSAGES.unavailable;
}

const label = (poll, id) => poll.options?.find((o) => o.id === id)?.label ?? id;

// What the voter's record says they chose, in words.
function chosen(poll, record) {
  if (!record) return null;
  const vote = record.choice ?? record; // GET .../mine: {choice: a vote body}; else a body sent
  if (!vote) return null;
  if (Array.isArray(vote.option_ids) && vote.option_ids.length) {
    return `You chose: ${vote.option_ids.map((id) => label(poll, id)).join(", ")}`;
  }
  if (vote.option_id) return `You chose: ${label(poll, vote.option_id)}`;
  if (vote.value !== undefined && vote.value !== null) return `You rated: ${vote.value}`;
  if (Array.isArray(vote.words) && vote.words.length) return `You sent: ${vote.words.join(", ")}`;
  return null;
}

function choicesLeft(poll, record) {
  const left = record?.choices_left ?? record?.left;
  if (typeof left === "number") return left;
  return chosen(poll, record) ? 0 : poll.choices_allowed ?? 1;
}

function leftText(poll, left) {
  if (left <= 0) return "No choices left";
  if (poll.type === "multiple") return `Choose up to ${left}`;
  if (poll.type === "words") return `Up to ${left} ${left === 1 ? "word" : "words"}`;
  return `${left} ${left === 1 ? "choice" : "choices"} left`;
}

function choiceButton(text, onClick) {
  const button = el("button", "choice", text);
  button.type = "button";
  button.addEventListener("click", onClick);
  return button;
}

// The inputs of a question, by type; `send(body)` posts a vote body.
function answerForm(poll, send) {
  const form = el("div", "answer");
  form.id = "answer";
  const type = poll.type || "single";
  if (type === "multiple") {
    const boxes = poll.options.map((option) => {
      const box = el("input");
      box.type = "checkbox";
      box.value = option.id;
      const row = el("label", "check");
      row.append(box, ` ${option.label}`);
      form.append(row);
      return box;
    });
    const limit = () => {
      const ticked = boxes.filter((b) => b.checked).length;
      boxes.forEach((b) => { b.disabled = !b.checked && ticked >= (poll.max_choices ?? 2); });
    };
    boxes.forEach((b) => b.addEventListener("change", limit));
    form.append(choiceButton("Send", () => send({ option_ids: boxes.filter((b) => b.checked).map((b) => b.value) })));
  } else if (type === "rating") {
    const scale = el("div", "scale");
    for (let v = poll.min ?? 1; v <= (poll.max ?? 5); v += 1) {
      const button = choiceButton(String(v), () => send({ value: v }));
      button.dataset.value = String(v);
      scale.append(button);
    }
    form.append(scale);
  } else if (type === "words") {
    const inputs = [];
    for (let i = 0; i < (poll.max_words ?? 3); i += 1) {
      const input = el("input", "word-input");
      input.maxLength = 40;
      input.placeholder = `Word ${i + 1}`;
      input.setAttribute("aria-label", `Word ${i + 1}`);
      inputs.push(input);
      form.append(input);
    }
    form.append(choiceButton("Send", () => send({ words: inputs.map((i) => i.value.trim()).filter(Boolean) })));
  } else {
    for (const option of poll.options) {
      const button = choiceButton(option.label, () => send({ option_id: option.id }));
      button.dataset.option = option.id;
      form.append(button);
    }
  }
  return form;
}

async function showQuestion(pollId) {
  shown += 1;
  const mine = shown;
  if (question) question.stop();
  question = null;
  onSummary = () => {};
  revealed = null;
  status("poll")("live");
  if (pollId === null) {
    const waiting = el("h1", "", "Waiting for the next question");
    waiting.id = "question";
    area.replaceChildren(waiting, el("p", "hint", "It appears here by itself."));
    area.dataset.pollId = "";
    return;
  }
  // same-origin: a phone without its voter cookie gets it with this answer
  const { status: code, body: poll } = await getJson(paths.poll(pollId));
  if (mine !== shown) return;
  if (code !== 200) {
    area.replaceChildren(el("h1", "", "This question cannot be shown just now"));
    return;
  }
  const heading = el("h1", "", poll.question);
  heading.id = "question";
  const message = el("p", "message");
  message.id = "message";
  message.setAttribute("role", "status");
  message.hidden = true;
  const closed = el("p", "closed-note", "This question is closed");
  closed.id = "closed";
  closed.hidden = true;
  const choice = el("p", "your-choice");
  choice.id = "your-choice";
  const left = el("p", "hint");
  left.id = "choices-left";
  const results = el("div", "phone-view");
  results.id = "results";
  results.hidden = true;
  let answered = false;
  let visible = poll.results_visible;
  let latest = null;
  let sent = null; // the last body counted: shown when the service keeps no record to read

  const showResults = () => {
    results.hidden = !(answered && visible && latest) && !(latest?.final && visible);
    if (latest && !results.hidden) {
      results.replaceChildren(resultsView(latest, poll), el("p", "total", totalLine(latest)));
    }
  };
  const showRecord = async () => {
    const record = (await ownRecord(pollId)) ?? sent;
    if (mine !== shown) return;
    const text = chosen(poll, record);
    answered = Boolean(text);
    choice.textContent = text ?? "";
    choice.hidden = !text;
    const picked = record?.choice?.option_ids ?? (record?.option_id ? [record.option_id] : []);
    const value = record?.choice?.value ?? record?.value;
    form.querySelectorAll("button.choice").forEach((b) => {
      const chosenOne = picked.includes(b.dataset.option) || (value !== undefined && b.dataset.value === String(value));
      b.classList.toggle("chosen", chosenOne);
    });
    const remaining = choicesLeft(poll, record);
    left.textContent = leftText(poll, remaining);
    form.querySelectorAll("button, input").forEach((b) => { b.disabled = b.disabled || remaining <= 0 || !closed.hidden; });
    showResults();
  };
  const close = () => {
    closed.hidden = false;
    form.querySelectorAll("button, input").forEach((b) => { b.disabled = true; });
  };
  const send = async (body) => {
    const buttons = [...form.querySelectorAll("button")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const response = await fetch(paths.vote(pollId), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      const answer = await response.json().catch(() => null);
      message.textContent = outcome(response.status, answer);
      if (response.ok) sent = body;
      if (answer?.type === "poll_closed") close();
    } catch {
      message.textContent = MESSAGES.unavailable;
    }
    message.hidden = false;
    buttons.forEach((b) => { b.disabled = !closed.hidden; });
    await showRecord();
  };
  const form = answerForm(poll, send);
  area.dataset.pollId = pollId;
  area.replaceChildren(heading, message, closed, choice, left, form, results);
  if (poll.state === "closed") close();
  await showRecord();
  if (mine !== shown) return;

  // hidden results: the stream is refused until the reveal, which the event's stream tells
  const untilVisible = async () => {
    const { status: code, body: now } = await getJson(paths.poll(pollId));
    if (code !== 200 || now.results_visible || mine !== shown) return; // not hidden: retry
    status("poll")("live");
    if (now.state === "closed") close();
    await new Promise((resolve) => {
      revealed = resolve;
      if (visible) resolve();
    });
  };
  onSummary = (summary) => { // the current poll's summary, from the event's stream
    if (summary.state === "closed") close();
    if (summary.results_visible && !visible) {
      visible = true;
      if (revealed) revealed();
    }
  };
  question = follow(paths.pollStream(pollId), {
    onState(state) {
      if (mine !== shown) return true;
      visible = true;
      latest = state;
      if (state.final) close();
      showResults();
      return state.final;
    },
    onStatus: status("poll"),
    refused: untilVisible,
  });
}

// The name this voter shows on the quiz leaderboard (optional), kept by the service.
function nameBox() {
  const box = el("form", "name-box");
  const input = el("input");
  input.name = "name";
  input.maxLength = 32;
  input.setAttribute("aria-label", "Your name on the quiz leaderboard");
  input.placeholder = "Your name on the quiz leaderboard";
  const said = el("span", "hint");
  box.append(input, el("button", "", "Save name"), said);
  box.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch(paths.join(eventId), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: input.value.trim() }),
      credentials: "same-origin",
    });
    const answer = await response.json().catch(() => null);
    said.textContent = response.ok ? ` Saved: ${answer.name}` : ` ${outcome(response.status, answer)}`;
  });
  return box;
}

main.append(nameBox());
followEvent(eventId, {
  onQuestion: showQuestion,
  onEvent: (state) => {
    if (state?.current && state.current.poll_id === area.dataset.pollId) onSummary(state.current);
  },
  onStatus: status("event"),
  onGone: () => {
    if (question) question.stop();
    showConnection("live");
    const ended = el("h1", "", "This event has ended");
    ended.id = "question";
    area.replaceChildren(ended);
  },
});

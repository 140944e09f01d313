// The organiser's page: everything is read from the service (no browser storage but the
// token, kept in this tab's sessionStorage). Events with their codes and links; the chosen
// event's questions in order, with state and counts, and every action on them.
import { currentPollId, eventList, paths } from "./event-api.js";

const TOKEN = "organiser-token";
const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem(TOKEN);
let chosen = null; // the event shown below the list
let event = null; // its last state from GET /api/v1/events/{id}

function showToken() {
  $("token-form").hidden = Boolean(token());
  $("token-state").hidden = !token();
}

function say(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

$("token-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  $("token").value = "";
  showToken();
  say("");
  await refresh();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  showToken();
});

// A refused token is forgotten at once and the box to type it is back, focused.
function refusedToken() {
  sessionStorage.removeItem(TOKEN);
  showToken();
  $("token").focus();
  say("The token was refused: type it again.");
}

async function call(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
  });
  const answer = { status: response.status, body: await response.json().catch(() => null) };
  if (answer.status === 401) refusedToken();
  return answer;
}

function problem({ status, body }) {
  if (status === 401) return "The token was refused: type it again.";
  if (status === 404 && !body?.type && body?.detail === "Not Found") {
    return "The service has no organiser token set (API_TOKEN), or no such thing.";
  }
  if (Array.isArray(body?.detail)) {
    return body.detail.map((d) => `${(d.loc || []).slice(1).join(" ")}: ${d.msg}`).join("; ");
  }
  return body?.detail || `The service answered ${status}.`;
}

async function act(method, path, body, ok = [200, 201, 204]) {
  const answer = await call(method, path, body);
  if (!ok.includes(answer.status)) {
    if (answer.status !== 401) say(problem(answer));
    return null;
  }
  say("");
  return answer;
}

function button(text, action, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  b.addEventListener("click", action);
  return b;
}

function link(text, href) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  a.target = "_blank";
  return a;
}

// A link to an organiser's file (CSV, JSON, history): fetched with the token, then saved.
function download(text, path, filename) {
  const a = link(text, path);
  a.addEventListener("click", async (event) => {
    event.preventDefault();
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, credentials: "omit" });
    if (response.status === 401) return refusedToken();
    if (!response.ok) return say(`The service answered ${response.status}.`);
    const url = URL.createObjectURL(await response.blob());
    const save = document.createElement("a");
    save.href = url;
    save.download = filename;
    save.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  return a;
}

function span(text, className) {
  const s = document.createElement("span");
  s.textContent = text;
  if (className) s.className = className;
  return s;
}

async function showEvents() {
  if (!token()) return;
  const answer = await call("GET", paths.events());
  if (answer.status !== 200) {
    if (answer.status !== 401) say(problem(answer));
    return;
  }
  const events = eventList(answer.body);
  $("no-events").hidden = events.length > 0;
  $("events").replaceChildren(...events.map((e) => {
    const item = document.createElement("li");
    item.dataset.eventId = e.event_id;
    const polls = e.poll_count ?? e.polls?.length ?? 0;
    item.append(
      span(e.title, "event-name"), " · ", span(e.code, "code"), " · ",
      span(`${polls} ${polls === 1 ? "question" : "questions"}`), " ",
      button("Questions", () => choose(e.event_id)),
      link("Presenter screen", paths.presenter(e.event_id)), " ",
      link("Audience page", paths.audience(e.code)),
    );
    return item;
  }));
}

function pollLine(poll, position, count) {
  const item = document.createElement("li");
  item.dataset.pollId = poll.poll_id;
  const current = currentPollId(event) === poll.poll_id;
  if (current) item.classList.add("current");
  const hidden = !poll.results_visible;
  const voters = poll.voters ?? poll.total_votes ?? 0;
  item.append(
    span(`${poll.question} `, "question-text"),
    span(`(${poll.type || "single"})`, "muted"), " ",
    span(poll.state + (hidden ? ", results hidden" : "") + (current ? ", on screen" : ""), "poll-state"), " ",
    span(`${voters} answered`, "answers"), document.createElement("br"),
  );
  const id = poll.poll_id;
  const reload = async (answer) => { if (answer) await refresh(); };
  if (!current) item.append(button("Show", async () => reload(await act("POST", paths.current(chosen), { poll_id: id }))));
  if (position > 0) item.append(button("Up", () => move(position, -1)));
  if (position < count - 1) item.append(button("Down", () => move(position, 1)));
  if (hidden) item.append(button("Reveal", async () => reload(await act("POST", paths.pollAction(id, "reveal")))));
  if (poll.state === "open") item.append(button("Close", async () => reload(await act("POST", paths.pollAction(id, "close")))));
  if (poll.state === "closed" && (poll.total_votes ?? 0) === 0) {
    item.append(button("Reopen", async () => reload(await act("POST", paths.pollAction(id, "reopen")))));
  }
  if (poll.state === "open") item.append(closesAt(poll, reload));
  item.append(" ", download("CSV", paths.pollCsv(id), `${id}.csv`), " ",
    download("History", paths.history(id), `${id}-history.json`));
  return item;
}

// A closing time for an open question (PATCH /polls/{id} {"closes_at"}), in local time.
function closesAt(poll, reload) {
  const input = document.createElement("input");
  input.type = "datetime-local";
  input.setAttribute("aria-label", `Closing time of ${poll.question}`);
  if (poll.closes_at) {
    const at = new Date(poll.closes_at);
    input.value = new Date(at.getTime() - at.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }
  const set = button("Set closing time", async () => {
    if (!input.value) return say("Choose a closing time first.");
    const body = { closes_at: new Date(input.value).toISOString() };
    reload(await act("PATCH", paths.poll(poll.poll_id), body));
  });
  const box = document.createElement("span");
  box.className = "closes-at";
  box.append(" ", input, set);
  return box;
}

async function move(position, by) {
  const ids = event.polls.map((p) => p.poll_id);
  [ids[position], ids[position + by]] = [ids[position + by], ids[position]];
  if (await act("POST", paths.order(chosen), { poll_ids: ids })) await choose(chosen);
}

async function choose(eventId) {
  chosen = eventId;
  const answer = await call("GET", paths.event(eventId));
  if (answer.status !== 200) {
    if (answer.status !== 401) say(problem(answer));
    return;
  }
  event = answer.body;
  $("event").hidden = false;
  $("event").dataset.eventId = eventId;
  $("event-title").textContent = event.title;
  $("event-code").textContent = event.code;
  $("event-links").replaceChildren(
    link("Presenter screen", paths.presenter(eventId)), " ",
    link("Audience page", paths.audience(event.code)), " ",
    download("CSV", paths.eventCsv(eventId), `${event.code}.csv`), " ",
    download("JSON", paths.eventJson(eventId), `${event.code}.json`),
  );
  const polls = event.polls || [];
  $("questions").replaceChildren(...polls.map((p, i) => pollLine(p, i, polls.length)));
}

$("next").addEventListener("click", async () => {
  const ids = (event?.polls || []).map((p) => p.poll_id);
  const at = ids.indexOf(currentPollId(event));
  if (at + 1 >= ids.length) return say("That was the last question.");
  if (await act("POST", paths.current(chosen), { poll_id: ids[at + 1] })) await choose(chosen);
});

$("waiting").addEventListener("click", async () => {
  if (await act("POST", paths.current(chosen), { poll_id: null })) await choose(chosen);
});

$("delete-event").addEventListener("click", async () => {
  if (!window.confirm(`Delete the event "${event.title}" and its questions?`)) return;
  if (await act("DELETE", paths.event(chosen))) {
    $("event").hidden = true;
    chosen = null;
    await showEvents();
  }
});

$("event-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = e.target;
  const answer = await act("POST", paths.events(), { title: form.title.value.trim() }, [201]);
  if (!answer) return;
  form.reset();
  say(`Event created: code ${answer.body.code}`);
  await showEvents();
  await choose(answer.body.event_id);
});

// The question form shows the fields of the chosen type only.
const questionForm = $("question-form");
function showTypeFields() {
  const type = questionForm.type.value;
  questionForm.querySelectorAll("[data-for]").forEach((label) => {
    label.hidden = !label.dataset.for.split(" ").includes(type);
  });
}
questionForm.type.addEventListener("change", showTypeFields);

function definition(form) {
  const type = form.type.value;
  const body = { type, question: form.question.value.trim(), results: form.results.value };
  const number = (name) => (form[name].value === "" ? undefined : Number(form[name].value));
  if (["single", "multiple", "quiz"].includes(type)) {
    const labels = form.options.value.split("\n").map((l) => l.trim()).filter(Boolean);
    body.options = labels.map((label, i) => ({ id: optionId(i), label }));
  }
  if (type === "single") body.votes_per_voter = number("votes_per_voter");
  if (type === "multiple") body.max_choices = number("max_choices");
  if (type === "rating") Object.assign(body, { min: number("min"), max: number("max") });
  if (type === "words") body.max_words = number("max_words");
  if (type === "quiz") {
    body.correct = optionId(number("correct") - 1);
    if (number("time_limit") !== undefined) body.time_limit = number("time_limit");
  }
  if (form.closes_at.value) body.closes_at = new Date(form.closes_at.value).toISOString();
  return body;
}

const optionId = (i) => String.fromCharCode(65 + i); // A, B, ... T

questionForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const answer = await act("POST", paths.eventPolls(chosen), definition(questionForm), [201]);
  if (!answer) return;
  const type = questionForm.type.value;
  questionForm.reset();
  questionForm.type.value = type;
  showTypeFields();
  say(`Question added: ${answer.body.question}`);
  await refresh();
});

async function refresh() {
  await showEvents();
  if (chosen) await choose(chosen);
}

showToken();
showTypeFields();
showEvents();

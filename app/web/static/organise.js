// The organiser's page: a token kept in this tab (sessionStorage), polls created from this
// browser remembered in localStorage, each shown with its state and its actions.
const TOKEN = "organiser-token";
const POLLS = "organiser-polls";
const MAX_OPTIONS = 20;
const $ = (id) => document.getElementById(id);

const token = () => sessionStorage.getItem(TOKEN);
const myPolls = () => JSON.parse(localStorage.getItem(POLLS) || "[]");
const remember = (ids) => localStorage.setItem(POLLS, JSON.stringify(ids));

function showToken() {
  $("token-form").hidden = Boolean(token());
  $("token-state").hidden = !token();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value.trim());
  $("token").value = "";
  showToken();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN);
  showToken();
});

$("add-option").addEventListener("click", () => {
  const count = document.querySelectorAll("#options .option").length;
  if (count >= MAX_OPTIONS) return;
  const input = document.createElement("input");
  input.className = "option";
  input.maxLength = 200;
  input.setAttribute("aria-label", `Option ${count + 1}`);
  input.placeholder = `Option ${count + 1}`;
  $("add-option").before(input);
});

async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  return { status: response.status, body: await response.json().catch(() => null) };
}

function problem({ status, body }) {
  if (status === 401) return "The token was refused: enter it again.";
  if (status === 404 && !body?.type) return "The service has no organiser token set (API_TOKEN).";
  if (Array.isArray(body?.detail)) {
    return body.detail.map((d) => `${d.loc.slice(1).join(" ")}: ${d.msg}`).join("; ");
  }
  return body?.detail || `The service answered ${status}.`;
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const labels = [...document.querySelectorAll("#options .option")]
    .map((input) => input.value.trim())
    .filter(Boolean);
  const definition = {
    question: form.question.value.trim(),
    options: labels.map((label, i) => ({ id: String.fromCharCode(65 + i), label })),
    votes_per_voter: Number(form.votes_per_voter.value),
    results: form.results.value,
  };
  const message = $("create-message");
  message.hidden = false;
  const answer = await call("POST", "/api/v1/polls", definition);
  if (answer.status !== 201) {
    message.textContent = problem(answer);
    return;
  }
  remember([answer.body.poll_id, ...myPolls()]);
  message.textContent = `Poll created: ${answer.body.poll_id}`;
  form.reset();
  await showPolls();
});

function button(text, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
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

async function pollItem(id) {
  const item = document.createElement("li");
  item.dataset.pollId = id;
  const response = await fetch(`/api/v1/polls/${encodeURIComponent(id)}`, { credentials: "omit" });
  const poll = await response.json().catch(() => null);
  const title = document.createElement("p");
  const state = document.createElement("span");
  state.className = "poll-state";
  if (!response.ok) {
    title.textContent = `${id}: ${response.status === 404 ? "no longer exists" : "unreachable"}`;
    item.append(title, button("Forget", () => {
      remember(myPolls().filter((p) => p !== id));
      showPolls();
    }));
    return item;
  }
  const hidden = !poll.results_visible;
  state.textContent = poll.state + (hidden ? ", results hidden" : "");
  title.append(`${poll.question} `, state);
  const act = (action) => async () => {
    const answer = await call("POST", `/api/v1/polls/${encodeURIComponent(id)}/${action}`);
    await showPolls();
    const message = $("polls-message");
    message.hidden = answer.status === 200;
    message.textContent = answer.status === 200 ? "" : problem(answer);
  };
  item.append(title, link("Presenter page", `/present/${encodeURIComponent(id)}`), " ",
    link("Voter page", `/p/${encodeURIComponent(id)}`));
  if (hidden) item.append(button("Reveal", act("reveal")));
  if (poll.state === "open") item.append(button("Close", act("close")));
  return item;
}

async function showPolls() {
  const ids = myPolls();
  $("no-polls").hidden = ids.length > 0;
  $("polls").replaceChildren(...(await Promise.all(ids.map(pollItem))));
}

showToken();
showPolls();

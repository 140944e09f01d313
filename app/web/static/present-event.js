// The presenter screen of an event: follows the event's state (which question is current)
// and the current question's results, both as streams that come back after a drop
// (live.js), and draws each type's layout (results-view.js). After a quiz question closes,
// the top of the leaderboard.
import { follow, showConnection } from "./live.js";
import { followEvent, getJson, leaders, paths } from "./event-api.js";
import { el, fit, resultsView, totalLine } from "./results-view.js";

const main = document.querySelector("main[data-event-id]");
const eventId = main.dataset.eventId;
const $ = (id) => document.getElementById(id);
const LEADERS_SHOWN = 5;
let question = null; // the follow() of the current question's results
let shown = 0; // bumps on every change of question: late answers for an old one are dropped

const statuses = { event: "live", poll: "live" };
const status = (which) => (value) => {
  statuses[which] = value;
  showConnection(Object.values(statuses).includes("reconnecting") ? "reconnecting" : "live");
};

function stateLine(poll, results) {
  if (results?.final) return poll.type === "quiz" ? "Closed — the answer" : "Closed — final results";
  return "Voting open";
}

async function showLeaders() {
  const top = (await leaders(eventId)).slice(0, LEADERS_SHOWN);
  const list = $("leaders");
  list.replaceChildren(...top.map((row) => el("li", "leader", `${row.name} — ${row.correct}`)));
  list.hidden = top.length === 0;
}

function draw(poll, results) {
  $("hidden").hidden = true;
  $("view").replaceChildren(resultsView(results, poll));
  $("view").dataset.type = results.type || poll.type;
  fit($("view"));
  $("total").textContent = totalLine(results);
  $("state").textContent = stateLine(poll, results);
  if (results.final && poll.type === "quiz") showLeaders();
}

// The results stream was refused: hidden results wait for the reveal, which the event's
// stream tells (its state holds the current poll's summary).
let revealed = null;
let shownVisible = false; // the event's stream says the shown poll's results are visible
async function untilVisible(pollId, mine) {
  const { status: code, body } = await getJson(paths.poll(pollId), "omit");
  if (code !== 200 || body.results_visible || mine !== shown) return; // not hidden: retry
  status("poll")("live");
  $("hidden").hidden = false;
  $("view").replaceChildren();
  $("total").textContent = "";
  $("state").textContent = body.state === "closed" ? "Closed" : "Voting open";
  await new Promise((resolve) => {
    revealed = () => { if (mine === shown) resolve(); };
    if (shownVisible) resolve();
  });
}

function onEvent(state) {
  const summary = state?.current;
  if (!summary || summary.poll_id !== main.dataset.pollId) return;
  if (!summary.results_visible) $("state").textContent = summary.state === "closed" ? "Closed" : "Voting open";
  shownVisible = summary.results_visible;
  if (summary.results_visible && revealed) revealed();
}

async function showQuestion(pollId) {
  shown += 1;
  const mine = shown;
  if (question) question.stop();
  question = null;
  revealed = null;
  shownVisible = false;
  status("poll")("live");
  $("leaders").hidden = true;
  $("view").replaceChildren();
  $("total").textContent = "";
  $("hidden").hidden = true;
  if (pollId === null) {
    $("question").textContent = main.dataset.title || document.title;
    $("question").classList.remove("long");
    $("state").textContent = "Waiting for the next question";
    return;
  }
  const { status: code, body: poll } = await getJson(paths.poll(pollId), "omit");
  if (mine !== shown || code !== 200) return;
  $("question").textContent = poll.question;
  $("question").classList.toggle("long", poll.question.length > 80 || (poll.options?.length ?? 0) > 8);
  main.dataset.pollId = pollId;
  main.dataset.type = poll.type || "single";
  question = follow(paths.pollStream(pollId), {
    onState(results) {
      if (mine !== shown) return true;
      draw(poll, results);
      return results.final;
    },
    onStatus: status("poll"),
    refused: () => untilVisible(pollId, mine),
  });
}

main.dataset.title = $("question").textContent;
followEvent(eventId, { onQuestion: showQuestion, onEvent, onStatus: status("event") });

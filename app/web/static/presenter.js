// Keeps the bars live from the results stream (Server-Sent Events), and goes back to it after
// a drop (live.js), showing "reconnecting" meanwhile. Each event has the shape of
// GET .../results. Hidden results: the stream is refused (403) until the organiser reveals
// them, so the poll's state is looked at every second (every 10 s once it is closed) until then.
import { follow, showConnection } from "./live.js";

const main = document.querySelector("main[data-poll-id]");
const pollId = encodeURIComponent(main.dataset.pollId);
const api = `/api/v1/polls/${pollId}`;
const CLOSED = "Voting closed — final results";

function setState(closed) {
  document.getElementById("state").textContent = closed ? CLOSED : "Voting open";
}

function showResults(visible) {
  document.getElementById("hidden").hidden = visible;
  document.getElementById("bars").hidden = !visible;
  document.querySelector(".total").hidden = !visible;
}

const percent = (count, total) => (total ? Math.round((100 * count) / total) : 0);

function render(results) {
  showResults(true);
  const total = results.total_votes;
  for (const option of results.options) {
    const bar = document.querySelector(`.bar[data-option="${CSS.escape(option.id)}"]`);
    if (!bar) continue;
    const count = bar.querySelector(".count");
    if (count.textContent !== String(option.count)) {
      count.textContent = option.count;
      count.classList.remove("bump");
      void count.offsetWidth; // restart the animation
      count.classList.add("bump");
    }
    bar.querySelector(".percent").textContent = `${percent(option.count, total)}%`;
    bar.querySelector(".fill").style.width = total ? `${(100 * option.count) / total}%` : "0%";
  }
  document.getElementById("total").textContent = total;
  setState(results.final);
  return results.final;
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The stream was refused: while the results are hidden, wait for the reveal.
async function untilVisible() {
  for (;;) {
    const poll = await fetch(api, { credentials: "omit" });
    if (!poll.ok) return; // not a hidden poll's answer: the stream is tried again
    const state = await poll.json();
    if (state.results_visible) return;
    showResults(false);
    setState(state.state === "closed");
    showConnection("live");
    await pause(state.state === "closed" ? 10000 : 1000);
  }
}

const final = main.dataset.closed === "true" && !document.getElementById("bars").hidden;
if (!final) follow(`${api}/stream`, { onState: render, onStatus: showConnection, refused: untilVisible });

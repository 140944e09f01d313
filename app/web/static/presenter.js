// Keeps the bars live: the results stream (Server-Sent Events) when the service has it, else
// the results endpoint every second. Each update has the shape of GET .../results.
const main = document.querySelector("main[data-poll-id]");
const pollId = encodeURIComponent(main.dataset.pollId);
const api = `/api/v1/polls/${pollId}`;
const CLOSED = "Voting closed — final results";
let finished = false;
let polling = false;

function setState(closed) {
  document.getElementById("state").textContent = closed ? CLOSED : "Voting open";
}

function showResults(visible) {
  document.getElementById("hidden").hidden = visible;
  document.getElementById("bars").hidden = !visible;
  document.querySelector(".total").hidden = !visible;
}

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
    bar.querySelector(".fill").style.width = total ? `${(100 * option.count) / total}%` : "0%";
  }
  document.getElementById("total").textContent = total;
  setState(results.final);
  finished = results.final;
}

// How long to wait before the next look: a closed poll whose results are still hidden
// changes only when the organiser reveals it, so it is asked about less often.
async function pollOnce() {
  const response = await fetch(`${api}/results`);
  if (response.ok) {
    render(await response.json());
  } else if (response.status === 403) { // hidden until revealed: still show open/closed
    showResults(false);
    const poll = await fetch(api, { credentials: "omit" });
    if (poll.ok && (await poll.json()).state === "closed") {
      setState(true);
      return 10000;
    }
  }
  return 1000;
}

async function poll() {
  if (polling) return;
  polling = true;
  while (!finished) {
    let wait = 1000;
    try {
      wait = await pollOnce();
    } catch {
      // the service is unreachable for a moment: keep what is shown, try again
    }
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

function stream() {
  if (!window.EventSource) return poll();
  const source = new EventSource(`${api}/stream`);
  let heard = false;
  source.onmessage = (event) => {
    heard = true;
    render(JSON.parse(event.data));
    if (finished) source.close();
  };
  source.onerror = () => {
    source.close();
    if (!finished) poll();
  };
  setTimeout(() => { // a stream that never opens (a proxy holding it back, say)
    if (!heard) {
      source.close();
      poll();
    }
  }, 3000);
}

const final = main.dataset.closed === "true" && !document.getElementById("bars").hidden;
if (!final) stream();

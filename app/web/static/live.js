// One live stream and its way back after a drop, shared by every page that follows a poll
// or an event. EventSource retries a dropped connection by itself (readyState CONNECTING);
// when the browser gives up instead (the service answered no stream: a 503 while it
// restarts, a proxy error), a new EventSource is opened after a back-off of 1 s doubling
// to 8 s. The page is told "live" or "reconnecting"; it never falls back to polling.
const FIRST_DELAY = 1000;
const MAX_DELAY = 8000;

// `onState(state)` gets each event's JSON and returns true when nothing more can follow
// (the final state): the stream is then closed. `onStatus("live" | "reconnecting")`.
// `refused()`, when given, is asked after the browser gave up: it resolves to true to try
// again now (after the back-off), or waits (for a reveal, say) before it resolves.
export function follow(url, { onState, onStatus = () => {}, refused = null }) {
  let source = null;
  let delay = FIRST_DELAY;
  let stopped = false;
  let timer = null;

  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    if (source) source.close();
  };

  const open = () => {
    if (stopped) return;
    source = new EventSource(url);
    source.onopen = () => {
      delay = FIRST_DELAY;
      onStatus("live");
    };
    source.onmessage = (event) => {
      onStatus("live");
      if (onState(JSON.parse(event.data))) stop();
    };
    source.onerror = async () => {
      if (stopped) return;
      onStatus("reconnecting");
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      source.close();
      const wait = delay;
      delay = Math.min(delay * 2, MAX_DELAY);
      if (refused) {
        try {
          await refused();
        } catch {
          // unreachable: the back-off below tries again
        }
      }
      timer = setTimeout(open, wait);
    };
  };

  open();
  return { stop };
}

// Shows or hides the page's "reconnecting" note (an element with id="connection").
export function showConnection(status) {
  const note = document.getElementById("connection");
  if (note) note.hidden = status !== "reconnecting";
}

// Where the event pages find things: every path of the events API they use is here, and so
// is the reading of an event's state, so a change of the API is a change of this file.
import { follow } from "./live.js";

const enc = encodeURIComponent;
export const paths = {
  event: (id) => `/api/v1/events/${enc(id)}`,
  eventStream: (id) => `/api/v1/events/${enc(id)}/stream`,
  current: (id) => `/api/v1/events/${enc(id)}/current`,
  leaderboard: (id) => `/api/v1/events/${enc(id)}/leaderboard`,
  poll: (id) => `/api/v1/polls/${enc(id)}`,
  pollStream: (id) => `/api/v1/polls/${enc(id)}/stream`,
  results: (id) => `/api/v1/polls/${enc(id)}/results`,
  vote: (id) => `/api/v1/polls/${enc(id)}/vote`,
  mine: (id) => `/api/v1/polls/${enc(id)}/my-vote`,
  join: (id) => `/api/v1/events/${enc(id)}/join`,
  // the organiser's
  events: () => "/api/v1/events",
  eventPolls: (id) => `/api/v1/events/${enc(id)}/polls`,
  order: (id) => `/api/v1/events/${enc(id)}/order`,
  eventCsv: (id) => `/api/v1/events/${enc(id)}/export.csv`,
  eventJson: (id) => `/api/v1/events/${enc(id)}/export.json`,
  pollAction: (id, action) => `/api/v1/polls/${enc(id)}/${action}`, // close, reveal, reopen
  pollCsv: (id) => `/api/v1/polls/${enc(id)}/results.csv`,
  history: (id) => `/api/v1/polls/${enc(id)}/history`,
  presenter: (id) => `/present/e/${enc(id)}`,
  audience: (code) => `/j/${enc(code)}`,
};

// The list of events from GET /api/v1/events, whichever way it is wrapped.
export const eventList = (body) => (Array.isArray(body) ? body : body?.events ?? []);

// The id of the poll an event shows now (null: the waiting screen), from its state.
export function currentPollId(state) {
  const current = state?.current ?? state?.current_poll_id ?? null;
  if (current === null || current === undefined) return null;
  return typeof current === "string" ? current : current.poll_id ?? null;
}

// Follows an event's state stream (GET /events/{id}/state: the event and its current poll's
// summary, sent again when the current poll changes, closes or is revealed);
// `onQuestion(pollId | null, state)` when the presenter moves to another question,
// `onEvent(state)` for every state.
// `onGone()` when the event no longer exists (deleted): the stream is then given up.
export function followEvent(eventId, { onQuestion, onEvent = () => {}, onStatus, onGone = null }) {
  let shown;
  let handle = null;
  const refused = async () => {
    const { status } = await getJson(paths.event(eventId), "omit");
    if (status === 404 && onGone) {
      handle.stop();
      onGone();
    }
  };
  handle = follow(paths.eventStream(eventId), {
    refused,
    onState(state) {
      onEvent(state);
      const pollId = currentPollId(state);
      if (pollId !== shown) {
        shown = pollId;
        onQuestion(pollId, state);
      }
      return false; // an event's stream does not end by itself
    },
    onStatus,
  });
  return handle;
}

export async function getJson(path, credentials = "same-origin") {
  const response = await fetch(path, { credentials });
  return { status: response.status, body: await response.json().catch(() => null) };
}

// The leaders of an event's quiz questions: [{name, correct}], best first.
export async function leaders(eventId) {
  const { status, body } = await getJson(paths.leaderboard(eventId), "omit");
  if (status !== 200 || !body) return [];
  const rows = Array.isArray(body) ? body : body.leaders ?? body.leaderboard ?? body.entries ?? [];
  return rows.map((row) => ({
    name: String(row.name ?? row.display_name ?? "anonymous"),
    correct: Number(row.correct ?? row.score ?? 0),
  }));
}

// What this voter chose in a poll, from the voter's own record on the node: the vote body
// it stands for ({option_id}, {option_ids}, {value} or {words}) and the choices left; null
// when nothing is recorded (or the service keeps no such record).
export async function ownRecord(pollId) {
  const { status, body } = await getJson(paths.mine(pollId));
  if (status !== 200 || !body) return null;
  return body;
}

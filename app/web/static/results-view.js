// The results of one question, drawn for its type, for the presenter screen and the phone.
// Every string from the service goes in with textContent (never innerHTML): escaped.
//   single, multiple, quiz: a bar per option with its count and percentage (for multiple,
//     the share of the voters who chose it; a quiz marks its correct option once closed);
//   rating: a histogram, a bar per value from min to max, and the mean;
//   words: a cloud, font size by count (the 50 most counted).
export const WORDS_SHOWN = 50;

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export const percent = (count, whole) => (whole ? Math.round((100 * count) / whole) : 0);

const FEW_OPTIONS = 6;

function bars(results, poll) {
  const list = el("ol", "bars");
  const options = results.options || [];
  list.style.setProperty("--rows", String(Math.max(options.length, 1)));
  if (options.length <= FEW_OPTIONS) list.classList.add("few"); // room for two-line labels
  // multiple: each option's share of the people who answered; else of the votes
  const whole = results.type === "multiple" ? results.voters : results.total_votes;
  const correct = results.correct ?? poll?.correct ?? null;
  for (const option of options) {
    const bar = el("li", "bar");
    bar.dataset.option = option.id;
    if (correct && option.id === correct) bar.classList.add("correct");
    const fill = el("span", "fill");
    fill.style.width = `${whole ? (100 * option.count) / whole : 0}%`;
    const track = el("span", "track");
    track.append(fill);
    const mark = correct && option.id === correct ? "✓ " : "";
    const name = el("span", "label", mark + option.label);
    name.title = option.label;
    bar.append(
      name,
      track,
      el("span", "count", String(option.count)),
      el("span", "percent", `${percent(option.count, whole)}%`),
    );
    list.append(bar);
  }
  return list;
}

function histogram(results, poll) {
  const low = poll?.min ?? 1;
  const high = poll?.max ?? 5;
  const values = results.values || {};
  const counts = [];
  for (let v = low; v <= high; v += 1) counts.push([v, values[String(v)] || 0]);
  const most = Math.max(1, ...counts.map(([, n]) => n));
  const chart = el("div", "histogram");
  chart.style.setProperty("--columns", String(counts.length));
  for (const [value, count] of counts) {
    const column = el("div", "column");
    column.dataset.value = String(value);
    const bar = el("span", "column-bar");
    bar.style.height = `${(100 * count) / most}%`;
    const stack = el("span", "column-track");
    stack.append(bar);
    column.append(el("span", "count", String(count)), stack, el("span", "value", String(value)));
    chart.append(column);
  }
  const mean = results.mean === null || results.mean === undefined ? "–" : String(results.mean);
  const summary = el("p", "mean");
  summary.append("Mean ", el("strong", "mean-value", mean));
  const box = el("div", "rating");
  box.append(chart, summary);
  return box;
}

function cloud(results) {
  const words = (results.words || []).slice(0, WORDS_SHOWN);
  const most = Math.max(1, ...words.map((w) => w.count));
  const box = el("p", "cloud");
  // shuffle-free, stable order: most counted in the middle reads well enough alphabetically
  for (const word of words) {
    const item = el("span", "word", word.text);
    item.dataset.count = String(word.count);
    // 1 to 4 units: font size grows with the square root of the count (area by count)
    item.style.setProperty("--size", (1 + 3 * Math.sqrt(word.count / most)).toFixed(2));
    item.title = `${word.count}`;
    box.append(item);
  }
  if (!words.length) box.append(el("span", "empty", "No words yet"));
  return box;
}

// The view of `results` (the shape of GET /polls/{id}/results) for `poll` (its description).
export function resultsView(results, poll) {
  const type = results.type || poll?.type || "single";
  if (type === "rating") return histogram(results, poll);
  if (type === "words") return cloud(results);
  return bars(results, poll);
}

export function totalLine(results) {
  const voters = results.voters ?? results.total_votes;
  return `${voters} ${voters === 1 ? "answer" : "answers"}`;
}

// Shrinks a view's type (the --fit factor) until its content fits its box, so 20 options
// or 50 words stay on the screen; grows back when there is room again.
export function fit(box) {
  let scale = 1;
  box.style.setProperty("--fit", "1");
  const over = () => box.scrollHeight > box.clientHeight + 1 || box.scrollWidth > box.clientWidth + 1;
  const inner = box.firstElementChild;
  const innerOver = () => inner && (inner.scrollHeight > inner.clientHeight + 1 || inner.scrollWidth > inner.clientWidth + 1);
  for (let i = 0; i < 20 && (over() || innerOver()); i += 1) {
    scale *= 0.9;
    box.style.setProperty("--fit", scale.toFixed(3));
  }
}

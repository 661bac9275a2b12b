"use strict";
// Upload images to /api/v1/detect once (with a low min_score), then draw and count client-side. Each class has
// its own operating point (model.conf[i]); the slider shifts all of them together, and at 0 the page shows the
// server's counts with their 90% intervals. Only textContent is used for names and messages: file names never
// become HTML.

const $ = (id) => document.getElementById(id);
const state = { model: null, minScore: 0.05, shift: 0, hidden: new Set(), items: [] };
// Rounded to the slider's step: 0.55 + 0.07 is 0.6200000000000001 in floating point, which would leave out
// a box scored 0.62 (scores come rounded to 4 decimals).
const thresholdOf = (label) => {
  const t = state.model.conf[state.model.classes.indexOf(label)] + state.shift;
  return Math.min(1, Math.max(state.minScore, Math.round(t * 10000) / 10000));
};

async function init() {
  const model = await (await fetch("api/v1/model")).json();
  Object.assign(state, { model, minScore: Math.min(0.05, ...model.conf), shift: 0 });
  const points = model.classes.map((name, i) => `${name} ${model.conf[i].toFixed(2)}`).join(", ");
  $("model").textContent = `${model.name} · operating points ${points}`;
  Object.assign($("thr"), { min: -0.3, max: 0.3, step: 0.01, value: 0 });
  $("thr-value").textContent = "+0.00";
  for (const name of model.classes) {
    const box = Object.assign(document.createElement("input"), { type: "checkbox", checked: true });
    box.addEventListener("change", () => {
      box.checked ? state.hidden.delete(name) : state.hidden.add(name);
      render();
    });
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = model.colors[name];
    const label = document.createElement("label");
    label.append(box, swatch, name);
    $("classes").append(label);
  }
}

function countsOf(record) {
  if (state.shift === 0) return record.counts; // the server's own counts at the model's operating points
  const counts = Object.fromEntries(state.model.classes.map((name) => [name, 0]));
  for (const d of record.detections) if (d.score >= thresholdOf(d.label)) counts[d.label] += 1;
  return counts;
}

// "21 (19–24)": the count and its 90% interval, which holds for the model's own operating points only.
function countText(record, counts, name) {
  const interval = state.shift === 0 && record.count_intervals ? record.count_intervals[name] : null;
  return interval ? `${counts[name]} (${interval[0]}–${interval[1]})` : `${counts[name]}`;
}

// The 90% interval of a total over images, as the slide report computes it (bloodcell.app.report):
// each image's count taken as normal with its interval's midpoint and half-width / 1.645, stretched to
// hold the total (each field's interval holds its count, but over many fields the offsets add up).
function totalInterval(records, name, total) {
  if (state.shift !== 0 || !records.length || !records.every((r) => r.count_intervals)) return null;
  const z = 1.645;
  let mid = 0;
  let variance = 0;
  for (const r of records) {
    const [lo, hi] = r.count_intervals[name];
    mid += (lo + hi) / 2;
    variance += ((hi - lo) / (2 * z)) ** 2;
  }
  const half = z * Math.sqrt(variance);
  return [Math.min(total, Math.max(0, Math.floor(mid - half))), Math.max(total, Math.ceil(mid + half))];
}

function newCard(name) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  card.querySelector(".counts").textContent = "detecting…";
  $("results").append(card);
  return card;
}

// A file already on the page (same name, size and time) is not counted twice in the totals.
const sameFile = (a, b) => a.name === b.name && a.size === b.size && a.lastModified === b.lastModified;

// Another file of a name already on the page (from another folder) is "s (2).jpg": the results, the CSV's rows
// and the PNGs name each field once (a report keeps one row per name, and would show one picture for both).
function uniqueName(name, taken) {
  if (!taken.has(name)) return name;
  const dot = name.lastIndexOf(".");
  const [stem, ext] = dot > 0 ? [name.slice(0, dot), name.slice(dot)] : [name, ""];
  for (let n = 2; ; n++) if (!taken.has(`${stem} (${n})${ext}`)) return `${stem} (${n})${ext}`;
}

// Uploads still waiting for their answer (every drop's cards are made at once).
const pending = () => state.items.filter((item) => !item.record && !item.error).length;

function showStatus(note = "") {
  const done = state.items.length - pending();
  const failed = state.items.filter((item) => item.error).length;
  const counted = done - failed;
  const finished = `${counted} image${counted === 1 ? "" : "s"} counted` + (failed ? `, ${failed} failed` : "");
  const text = pending() ? `detecting… ${done} of ${state.items.length} done` : finished;
  $("status").textContent = note ? `${text}; ${note}` : text;
}

async function upload(chosen) {
  const files = [...chosen]; // a drop's list may be emptied once its event ends
  if (!(await ready)) return; // chosen while the page still reads the model: counted once it has it
  // A file that failed before is tried again (its error card goes); one counted already is not added twice.
  const retried = (item) => item.error && [...files].some((f) => sameFile(item.file, f));
  for (const item of state.items.filter(retried)) item.card.remove();
  state.items = state.items.filter((item) => !retried(item));
  const fresh = [...files].filter((f) => !state.items.some((item) => sameFile(item.file, f)));
  const skipped = files.length - fresh.length;
  const note = skipped ? `${skipped} file(s) already on the page, not added again` : "";
  // Cards for the whole drop at once, so a second drop during this one queues behind it in the status.
  const taken = new Set(state.items.map((item) => item.name));
  const todo = fresh.map((file) => {
    const name = uniqueName(file.name, taken);
    taken.add(name);
    return { file, name, record: null, bitmap: null, error: null };
  });
  for (const item of todo) item.card = newCard(item.name);
  state.items.push(...todo);
  showStatus(note);
  for (const item of todo) {
    const file = item.file;
    try {
      const body = new FormData();
      body.append("file", file);
      const response = await fetch(`api/v1/detect?min_score=${state.minScore}`, { method: "POST", body });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
      item.record = answer; // item.name stays the browser's: the server echoes it, minus control characters
      item.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
    } catch (e) {
      item.error = e.message;
    }
    render();
    showStatus(note);
  }
}

function clearAll() {
  if (pending()) return; // uploads in flight would come back to a page that forgot them
  for (const item of state.items) item.card.remove();
  state.items = [];
  render();
  showStatus();
}

function draw(item) {
  const canvas = item.card.querySelector("canvas");
  canvas.hidden = !item.bitmap; // e.g. TIFF, which browsers cannot show: counts only, and said
  item.card.querySelector(".no-preview").hidden = Boolean(item.bitmap) || !item.record;
  if (!item.bitmap) return;
  const { width, height, detections } = item.record;
  Object.assign(canvas, { width, height });
  const ctx = canvas.getContext("2d");
  const t = Math.max(1, Math.round(Math.max(width, height) / 320));
  ctx.drawImage(item.bitmap, 0, 0, width, height);
  ctx.lineWidth = t;
  ctx.font = `${Math.max(10, Math.round(Math.max(width, height) / 50))}px sans-serif`;
  ctx.textBaseline = "top";
  for (const d of detections) {
    if (d.score < thresholdOf(d.label) || state.hidden.has(d.label)) continue;
    const [x1, y1, x2, y2] = d.box;
    ctx.strokeStyle = ctx.fillStyle = state.model.colors[d.label];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(`${d.label} ${d.score.toFixed(2)}`, x1 + t + 1, y1 + t);
  }
}

function row(parent, cells, tag = "td") {
  const tr = document.createElement("tr");
  for (const value of cells) tr.append(Object.assign(document.createElement(tag), { textContent: value }));
  parent.append(tr);
}

function render() {
  const classes = state.model.classes;
  const totals = Object.fromEntries(classes.map((name) => [name, 0]));
  const table = $("summary");
  for (const part of table.children) part.replaceChildren();
  row(table.tHead, ["Image", "Size", ...classes, "Total", "Warnings"], "th");
  for (const item of state.items) {
    item.card.classList.toggle("error", Boolean(item.error));
    const text = item.card.querySelector(".counts");
    if (item.error) {
      text.textContent = item.error;
      item.card.querySelector("canvas").hidden = true;
      continue;
    }
    if (!item.record) continue;
    draw(item);
    const counts = countsOf(item.record);
    classes.forEach((name) => (totals[name] += counts[name]));
    const shown = classes.map((name) => countText(item.record, counts, name));
    text.textContent = classes.map((name, i) => `${name} ${shown[i]}`).join(" · ");
    const warnings = item.record.warnings || [];
    item.card.querySelector(".warnings").textContent = warnings.map((w) => `⚠ ${w}`).join("\n");
    const n = classes.map((name) => counts[name]);
    const size = `${item.record.width}×${item.record.height}`;
    row(table.tBodies[0], [item.name, size, ...shown, n.reduce((a, b) => a + b), warnings.join("; ")]);
  }
  const done = state.items.filter((item) => item.record).length;
  const sums = classes.map((name) => totals[name]);
  const shownSums = classes.map((name, i) => {
    const iv = totalInterval(state.items.filter((item) => item.record).map((item) => item.record), name, sums[i]);
    return iv ? `${sums[i]} (${iv[0]}–${iv[1]})` : `${sums[i]}`;
  });
  const doubtful = state.items.filter((item) => item.record && (item.record.warnings || []).length).length;
  const flagged = doubtful ? `${doubtful} with warnings` : "";
  row(table.tFoot, [`All ${done} image${done === 1 ? "" : "s"}`, "", ...shownSums, sums.reduce((a, b) => a + b, 0), flagged]);
  table.hidden = done === 0;
  for (const id of ["csv", "json", "png"]) $(id).disabled = done === 0;
  $("clear").disabled = state.items.length === 0;
}

function save(blob, name) {
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Quoted CSV text; a leading = + - @ tab CR (or a ' before one) gets a ' so spreadsheets do not run it as
// a formula, as bloodcell's own CSVs do (app/sinks.py spreadsheet_text; the report undoes it).
const csvCell = (v) =>
  typeof v === "number" ? v : `"${String(v).replace(/^([=+\-@\t\r]|'[=+\-@\t\r'])/, "'$1").replace(/"/g, '""')}"`;

function downloadCsv() {
  const classes = state.model.classes;
  const columns = classes.flatMap((k) => [k, `${k}_lo90`, `${k}_hi90`, `${k}_threshold`]);
  const lines = [["image", "width", "height", ...columns, "warnings", "error"]];
  for (const item of state.items) {
    if (item.error) lines.push([item.name, "", "", ...columns.map(() => ""), "", item.error]);
    else if (item.record) {
      const counts = countsOf(item.record);
      const cells = classes.flatMap((k) => {
        const iv = state.shift === 0 && item.record.count_intervals ? item.record.count_intervals[k] : ["", ""];
        return [counts[k], iv[0], iv[1], thresholdOf(k)];
      });
      const warnings = (item.record.warnings || []).join("; ");
      lines.push([item.name, item.record.width, item.record.height, ...cells, warnings, ""]);
    }
  }
  save(new Blob([lines.map((l) => l.map(csvCell).join(",")).join("\n") + "\n"], { type: "text/csv" }), "counts.csv");
}

function downloadJson() {
  const images = state.items.filter((item) => item.record || item.error).map((item) =>
    item.error
      ? { image: item.name, error: item.error }
      : {
          ...item.record,
          image: item.name,
          conf: state.model.classes.map(thresholdOf), // the operating points these counts used
          counts: countsOf(item.record),
          count_intervals: state.shift === 0 ? item.record.count_intervals : null,
          detections: item.record.detections.filter((d) => d.score >= thresholdOf(d.label)),
        },
  );
  const thresholds = Object.fromEntries(state.model.classes.map((k) => [k, thresholdOf(k)]));
  const text = JSON.stringify({ model: state.model.name, thresholds, images }, null, 2);
  save(new Blob([text], { type: "application/json" }), "results.json");
}

function downloadPngs() {
  for (const item of state.items) {
    if (!item.bitmap) continue;
    // the whole name: f.jpg and f.png are two fields, f.jpg_annotated.png and f.png_annotated.png
    item.card.querySelector("canvas").toBlob((blob) => save(blob, `${item.name}_annotated.png`), "image/png");
  }
}

function wire() {
  // The whole window takes drops, so a near miss never navigates away from the results.
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    $("drop").classList.add("over");
  });
  window.addEventListener("dragleave", () => $("drop").classList.remove("over"));
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    $("drop").classList.remove("over");
    upload(e.dataTransfer.files);
  });
  $("files").addEventListener("change", (e) => upload(e.target.files).then(() => (e.target.value = "")));
  $("thr").addEventListener("input", (e) => {
    if (!state.model) return; // init() sets the slider back to 0 once the model is read
    state.shift = Number(e.target.value);
    $("thr-value").textContent = `${state.shift >= 0 ? "+" : ""}${state.shift.toFixed(2)}`;
    render();
  });
  $("csv").addEventListener("click", downloadCsv);
  $("json").addEventListener("click", downloadJson);
  $("png").addEventListener("click", downloadPngs);
  $("clear").addEventListener("click", clearAll);
}

// Wired at once, so a file dropped before the model is read is not opened by the browser in place of the page.
const ready = init().then(
  () => true,
  (e) => {
    $("model").textContent = `cannot reach the server: ${e.message}`;
    return false;
  },
);
wire();

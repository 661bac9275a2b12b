"use strict";
// Upload images to /api/v1/detect once (with a low min_score), then draw and count client-side at the slider's
// threshold. Only textContent is used for names and messages: file names never become HTML.

const $ = (id) => document.getElementById(id);
const state = { model: null, minScore: 0.05, thr: 0.5, hidden: new Set(), items: [] };

async function init() {
  const model = await (await fetch("api/v1/model")).json();
  Object.assign(state, { model, minScore: Math.min(0.05, model.conf), thr: model.conf });
  $("model").textContent = `${model.name} · ${model.classes.join(", ")} · operating threshold ${model.conf}`;
  Object.assign($("thr"), { min: state.minScore, value: model.conf });
  $("thr-value").textContent = model.conf.toFixed(3);
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
  if (state.thr === state.model.conf) return record.counts; // the server's own counts at the model's threshold
  const counts = Object.fromEntries(state.model.classes.map((name) => [name, 0]));
  for (const d of record.detections) if (d.score >= state.thr) counts[d.label] += 1;
  return counts;
}

function newCard(name) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  card.querySelector(".counts").textContent = "detecting…";
  $("results").append(card);
  return card;
}

async function upload(files) {
  const todo = [...files];
  for (const [i, file] of todo.entries()) {
    $("status").textContent = `detecting ${i + 1} / ${todo.length}…`;
    const item = { name: file.name, record: null, bitmap: null, error: null, card: newCard(file.name) };
    state.items.push(item);
    try {
      const body = new FormData();
      body.append("file", file);
      const response = await fetch(`api/v1/detect?min_score=${state.minScore}`, { method: "POST", body });
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
      item.record = answer;
      item.name = answer.image;
      item.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
    } catch (e) {
      item.error = e.message;
    }
    render();
  }
  $("status").textContent = `${state.items.length} image(s)`;
}

function draw(item) {
  const canvas = item.card.querySelector("canvas");
  canvas.hidden = !item.bitmap; // e.g. TIFF, which browsers cannot show: counts only
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
    if (d.score < state.thr || state.hidden.has(d.label)) continue;
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
  row(table.tHead, ["Image", "Size", ...classes, "Total"], "th");
  for (const item of state.items) {
    item.card.classList.toggle("error", Boolean(item.error));
    const text = item.card.querySelector(".counts");
    if (item.error) {
      text.textContent = item.error;
      continue;
    }
    if (!item.record) continue;
    draw(item);
    const counts = countsOf(item.record);
    classes.forEach((name) => (totals[name] += counts[name]));
    text.textContent = classes.map((name) => `${name} ${counts[name]}`).join(" · ");
    const n = classes.map((name) => counts[name]);
    row(table.tBodies[0], [item.name, `${item.record.width}×${item.record.height}`, ...n, n.reduce((a, b) => a + b)]);
  }
  const done = state.items.filter((item) => item.record).length;
  const sums = classes.map((name) => totals[name]);
  row(table.tFoot, [`All ${done} images`, "", ...sums, sums.reduce((a, b) => a + b, 0)]);
  table.hidden = done === 0;
  for (const id of ["csv", "json", "png"]) $(id).disabled = done === 0;
}

function save(blob, name) {
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

// Quoted CSV text; a leading = + - @ is escaped so spreadsheets do not run it as a formula.
const csvCell = (v) => (typeof v === "number" ? v : `"${String(v).replace(/^([=+\-@])/, "'$1").replace(/"/g, '""')}"`);

function downloadCsv() {
  const classes = state.model.classes;
  const lines = [["image", "width", "height", ...classes, "threshold", "error"]];
  for (const item of state.items) {
    if (item.error) lines.push([item.name, "", "", ...classes.map(() => ""), state.thr, item.error]);
    else if (item.record) {
      const counts = countsOf(item.record);
      lines.push([item.name, item.record.width, item.record.height, ...classes.map((k) => counts[k]), state.thr, ""]);
    }
  }
  save(new Blob([lines.map((l) => l.map(csvCell).join(",")).join("\n") + "\n"], { type: "text/csv" }), "counts.csv");
}

function downloadJson() {
  const images = state.items.map((item) =>
    item.error
      ? { image: item.name, error: item.error }
      : { ...item.record, counts: countsOf(item.record), detections: item.record.detections.filter((d) => d.score >= state.thr) },
  );
  const text = JSON.stringify({ model: state.model.name, threshold: state.thr, images }, null, 2);
  save(new Blob([text], { type: "application/json" }), "results.json");
}

function downloadPngs() {
  for (const item of state.items) {
    if (!item.bitmap) continue;
    const stem = item.name.replace(/\.[^.]*$/, "");
    item.card.querySelector("canvas").toBlob((blob) => save(blob, `${stem}_annotated.png`), "image/png");
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
    state.thr = Number(e.target.value);
    $("thr-value").textContent = state.thr.toFixed(3);
    render();
  });
  $("csv").addEventListener("click", downloadCsv);
  $("json").addEventListener("click", downloadJson);
  $("png").addEventListener("click", downloadPngs);
}

init().then(wire, (e) => ($("model").textContent = `cannot reach the server: ${e.message}`));

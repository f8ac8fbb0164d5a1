// The transferlab web page: choose or drop an image, POST it to /api/predict, draw the top-k classes as bars.
"use strict";

const TOP_K = 5;
const el = (id) => document.getElementById(id);
let maxUploadBytes = Infinity;
let lastFile = null; // the image shown, explained when the heatmap toggle is on

async function loadModel() {
  try {
    const model = await (await fetch("/api/model")).json();
    maxUploadBytes = model.max_upload_mb * 1024 * 1024;
    const accuracy = model.metrics.test_accuracy;
    // without a test folder the run scored its validation images: say so rather than call it test accuracy
    const split = model.metrics.test_is_validation ? "validation" : "test";
    const scored = accuracy == null ? "" : `, ${split} accuracy ${(100 * accuracy).toFixed(1)}%`;
    el("model-summary").textContent = `${model.backbone} (${model.strategy}): ${model.labels.length} classes${scored}`;
    el("report-link").hidden = !model.report;
    el("heatmap-toggle").hidden = model.runtime !== "torch"; // an ONNX model gives no gradients to explain with
  } catch (error) {
    el("model-summary").textContent = `could not reach the model: ${error}`;
  }
}

function showStatus(text, isError = false) {
  el("status").textContent = text;
  el("status").className = isError ? "error" : "muted";
}

function showResults(top) {
  const list = el("results");
  list.replaceChildren(...top.map(({ label, probability }) => {
    const item = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label; // textContent, never innerHTML: labels are folder names
    const percent = document.createElement("span");
    percent.className = "probability";
    percent.textContent = `${(100 * probability).toFixed(1)}%`;
    row.append(name, percent);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    bar.append(fill);
    item.append(row, bar);
    return item;
  }));
}

// A model answers with one of its classes even for a photo unlike any it was trained on: say so beside the bars.
function showDoubt(result) {
  const doubt = el("doubt");
  doubt.hidden = !result.low_confidence;
  doubt.textContent = result.low_confidence ? `Low confidence: ${result.low_confidence_reason}. This image may not belong to any of the classes.` : "";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// Grad-CAM of the predicted class (/api/explain), shown under the bars while the toggle is on.
async function showHeatmap() {
  const heatmap = el("heatmap");
  heatmap.hidden = true;
  if (!el("show-heatmap").checked || !lastFile) return;
  const form = new FormData();
  form.append("file", lastFile);
  try {
    const response = await fetch("/api/explain", { method: "POST", body: form });
    if (!response.ok) {
      showStatus(`heatmap of ${lastFile.name}: ${await errorMessage(response)}`, true);
      return;
    }
    const result = await response.json();
    heatmap.src = result.overlay;
    heatmap.title = `${result.label} ${(100 * result.probability).toFixed(1)}%`;
    heatmap.hidden = false;
  } catch (error) {
    showStatus(`request failed: ${error}`, true);
  }
}

async function classify(file) {
  lastFile = null;
  el("heatmap").hidden = true;
  el("results").replaceChildren();
  el("doubt").hidden = true;
  const preview = el("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  if (file.size > maxUploadBytes) {
    showStatus(`${file.name} is too large (limit ${(maxUploadBytes / 1048576).toFixed(0)} MB)`, true);
    return;
  }
  showStatus(`classifying ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const response = await fetch(`/api/predict?top_k=${TOP_K}`, { method: "POST", body: form });
    if (!response.ok) {
      showStatus(`${file.name}: ${await errorMessage(response)}`, true);
      return;
    }
    const result = await response.json();
    showStatus(`${result.filename} (${result.width}×${result.height}) in ${(1000 * result.seconds).toFixed(0)} ms`);
    showResults(result.top);
    showDoubt(result);
    lastFile = file;
    showHeatmap();
  } catch (error) {
    showStatus(`request failed: ${error}`, true);
  }
}

function setUpDropZone() {
  const zone = el("drop-zone");
  el("file").addEventListener("change", (event) => {
    if (event.target.files.length) classify(event.target.files[0]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
  });
}

setUpDropZone();
el("show-heatmap").addEventListener("change", showHeatmap);
loadModel();

// e5studio web UI: copy buttons, confirmations, live endpoint status, the try-it box and job charts.
// Plain JavaScript, no build step; every POST carries the session's CSRF token.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) { window.location.reload(); throw new Error("session expired"); }
  return response.json();
}

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) {
    const message = data.error ? data.error.message : (data.message || response.statusText);
    throw new Error(message);
  }
  return data;
}

function setupCopyButtons() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.querySelector(button.dataset.copy);
      const text = source ? source.textContent.trim() : "";
      try {
        await navigator.clipboard.writeText(text);
      } catch (err) { // http pages on another host have no clipboard API: select the text instead
        const range = document.createRange();
        range.selectNodeContents(source);
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        document.execCommand("copy");
      }
      const label = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = label; }, 1500);
    });
  });
}

function setupConfirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
}

// -------------------------------------------------------------------------------- endpoint status

function updateEndpointRow(row, e) {
  const fields = {
    status: e.shown_status, reason: e.reason, reason_short: e.reason_short, requests: String(e.requests),
    errors: String(e.errors),
    p50_ms: e.p50_ms === null ? "–" : String(e.p50_ms), mean_ms: e.mean_ms === null ? "–" : String(e.mean_ms),
    replicas: e.replicas,
  };
  row.querySelectorAll("[data-field]").forEach((cell) => {
    const value = fields[cell.dataset.field];
    if (value === undefined) return;
    cell.textContent = value;
    if (cell.dataset.field === "status") cell.className = "status status-" + value.toLowerCase();
  });
}

function setupEndpointPolling() {
  const container = document.querySelector("[data-poll-endpoints]");
  if (!container) return;
  const project = container.dataset.pollEndpoints;
  async function poll() {
    try {
      const data = await getJSON("/ui/api/endpoints?project=" + encodeURIComponent(project));
      data.endpoints.forEach((e) => {
        document.querySelectorAll('[data-endpoint-id="' + e.id + '"]').forEach((row) => updateEndpointRow(row, e));
        // a Failed endpoint answers nothing: its page offers no box to try it
        const tryBox = document.getElementById("try-it");
        const tryForm = document.getElementById("try-form");
        if (tryBox && tryForm && tryForm.dataset.endpoint === e.id) tryBox.hidden = e.status === "Failed";
      });
    } catch (err) { /* next poll tries again */ }
    setTimeout(poll, 1500);
  }
  poll();
}

// -------------------------------------------------------------------------------- try it

function setupTryIt() {
  const form = document.getElementById("try-form");
  if (!form) return;
  const result = document.getElementById("try-result");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    // each text with its own role: a query and the passage it should find get different prefixes
    const pairs = [[form.text_a.value, form.role_a.value], [form.text_b.value, form.role_b.value]]
      .filter(([text]) => text.trim() !== "");
    result.textContent = "Embedding…";
    try {
      const data = await postJSON("/ui/api/endpoints/" + form.dataset.endpoint + "/try",
        { texts: pairs.map(([text]) => text), input_types: pairs.map(([, role]) => role) });
      result.replaceChildren();
      const summary = document.createElement("p");
      summary.id = "try-dimension";
      summary.textContent = "Dimension " + data.dimension + " · " + data.tokens + " tokens";
      result.appendChild(summary);
      data.texts.forEach((text, i) => {
        const p = document.createElement("p");
        p.className = "vector";
        p.textContent = JSON.stringify(text) + " → [" + data.first_values[i].join(", ") + ", …] (norm "
          + data.norms[i] + ")";
        result.appendChild(p);
      });
      if (data.cosine !== undefined) {
        const cos = document.createElement("p");
        cos.id = "try-cosine";
        cos.textContent = "Cosine similarity: " + data.cosine.toFixed(4);
        result.appendChild(cos);
      }
    } catch (err) {
      result.replaceChildren();
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = err.message;
      result.appendChild(p);
    }
  });
}

// -------------------------------------------------------------------------------- train form

// The defaults of the train form follow the chosen base model (small models have their own measured values);
// a field the user changed keeps its value.
function setupTrainDefaults() {
  const form = document.getElementById("new-job");
  if (!form) return;
  // not form.dataset: a form's fields override its properties, and this form has a field named "dataset"
  const smallModels = JSON.parse(form.getAttribute("data-small-models") || "[]");
  function baseIsSmall() {
    const other = form.model_other.value.trim();
    return smallModels.includes(other !== "" ? other : form.model.value);
  }
  function apply() {
    const small = baseIsSmall();
    form.querySelectorAll("input[data-default]").forEach((input) => {
      const wanted = small ? input.dataset.defaultSmall : input.dataset.defaultE5;
      if (input.value === input.dataset.default) input.value = wanted;
      input.dataset.default = wanted;
      const note = input.parentElement.querySelector(".default-note");
      if (note) note.textContent = small ? note.dataset.noteSmall : note.dataset.noteE5;
    });
  }
  form.model.addEventListener("change", apply);
  form.model_other.addEventListener("input", apply);
}

// -------------------------------------------------------------------------------- charts

const SVG_NS = "http://www.w3.org/2000/svg";
const SERIES_COLOURS = 6; // .series-0 ... .series-5 in style.css

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  Object.entries(attributes).forEach(([k, v]) => element.setAttribute(k, v));
  if (text !== undefined) element.textContent = text;
  return element;
}

function formatNumber(v) {
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(3);
}

// points: [[x, y], ...] (one line) or {name: [[x, y], ...], ...} (one line per name, with a legend);
// draws axes with min/max labels, the lines and (for few points) dots.
function drawLineChart(container, points, xLabel, yLabel) {
  const svg = container.querySelector("svg");
  svg.replaceChildren();
  const width = 480, height = 220, left = 52, right = 12, top = 12, bottom = 34;
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const series = Array.isArray(points) ? { "": points } : points;
  const all = Object.values(series).flat();
  container.dataset.points = String(all.length);
  container.dataset.series = String(Object.keys(series).length);
  if (all.length === 0) {
    svg.appendChild(svgElement("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no data yet"));
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => left + (x - x0) / (x1 - x0) * (width - left - right);
  const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  svg.appendChild(svgElement("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }));
  svg.appendChild(svgElement("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }));
  svg.appendChild(svgElement("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, formatNumber(y1)));
  svg.appendChild(svgElement("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, formatNumber(y0)));
  svg.appendChild(svgElement("text", { x: left, y: height - bottom + 14, "text-anchor": "start" }, formatNumber(x0)));
  svg.appendChild(svgElement("text", { x: width - right, y: height - bottom + 14, "text-anchor": "end" }, formatNumber(x1)));
  svg.appendChild(svgElement("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  svg.appendChild(svgElement("text", { x: 12, y: (top + height - bottom) / 2, "text-anchor": "middle",
    transform: "rotate(-90 12 " + (top + height - bottom) / 2 + ")" }, yLabel));
  // one colour per series from the stylesheet (series-0 ...): the page's CSP forbids inline styles
  Object.entries(series).forEach(([name, line], k) => {
    if (line.length === 0) return;
    const colour = name ? " series-" + (k % SERIES_COLOURS) : "";
    const path = line.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
    svg.appendChild(svgElement("path", { class: "line" + colour, d: path }));
    if (line.length <= 40) {
      line.forEach((p) => svg.appendChild(svgElement("circle", { class: "dot" + colour, cx: sx(p[0]), cy: sy(p[1]),
        r: 3 })));
    }
    if (name) {
      svg.appendChild(svgElement("text", { class: "legend" + colour, x: width - right - 4, y: top + 10 + 13 * k,
        "text-anchor": "end" }, name));
    }
  });
}

// -------------------------------------------------------------------------------- jobs

const FINAL_STATUSES = ["Succeeded", "Failed", "Cancelled", "Interrupted"];

function setupJobPage() {
  const page = document.querySelector("[data-job-id]");
  if (!page) return;
  const jobId = page.dataset.jobId;
  const lossChart = document.getElementById("loss-chart");
  const evalChart = document.getElementById("ndcg-chart");
  async function poll() {
    let data;
    try {
      data = await getJSON("/ui/api/jobs/" + jobId);
    } catch (err) { setTimeout(poll, 2000); return; }
    const status = document.getElementById("job-status");
    status.textContent = data.status;
    status.className = "status status-" + data.status.toLowerCase();
    document.getElementById("job-reason").textContent = data.status_reason;
    document.getElementById("job-progress").value = data.progress;
    document.getElementById("job-steps").textContent = data.step + " / " + data.total_steps;
    const phase = document.getElementById("job-phase");
    if (phase) phase.textContent = data.phase_line || "";
    if (lossChart) drawLineChart(lossChart, data.history.loss, "step", "loss");
    if (evalChart) {
      const sets = data.history.sets || {};
      const names = Object.keys(sets);
      if (names.length > 1) {
        const series = {};
        names.forEach((n) => { series[n] = sets[n].map((e) => [e[0], e[2]]); });
        drawLineChart(evalChart, series, "epoch", "nDCG@10");
      } else {
        drawLineChart(evalChart, data.history.eval.map((e) => [e[0], e[2]]), "epoch", "nDCG@10");
      }
    }
    const log = document.getElementById("job-log");
    if (log) { log.textContent = data.log.join("\n"); log.scrollTop = log.scrollHeight; }
    const actions = document.getElementById("job-actions");
    if (actions && actions.dataset.status !== data.status) {
      window.location.reload(); // the actions (cancel / resume / deploy) depend on the status
      return;
    }
    if (!FINAL_STATUSES.includes(data.status)) setTimeout(poll, 1500);
  }
  poll();
}

function setupJobListPolling() {
  const table = document.querySelector("[data-poll-jobs]");
  if (!table) return;
  async function poll() {
    try {
      const data = await getJSON("/ui/api/jobs?kind=" + encodeURIComponent(table.dataset.pollJobs));
      data.jobs.forEach((job) => {
        const row = table.querySelector('[data-row-job="' + job.id + '"]');
        if (!row) return;
        const status = row.querySelector('[data-field="status"]');
        status.textContent = job.status;
        status.className = "status status-" + job.status.toLowerCase();
        row.querySelector("progress").value = job.progress;
        row.querySelector('[data-field="steps"]').textContent = job.step + " / " + job.total_steps;
      });
    } catch (err) { /* next poll tries again */ }
    setTimeout(poll, 2000);
  }
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopyButtons();
  setupConfirmations();
  setupEndpointPolling();
  setupTryIt();
  setupTrainDefaults();
  setupJobPage();
  setupJobListPolling();
});

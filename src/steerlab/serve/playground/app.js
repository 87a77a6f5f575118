// steerlab playground: plain JS against the server's own OpenAI-compatible API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, vectors: [], maxRelative: 1.0 };

// A server started with an API key answers 401 until the page sends it: ask once, keep it for this tab.
function withKey(options) {
  const key = sessionStorage.getItem("steerlab-api-key");
  if (!key) return options;
  return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` } };
}

async function authorised(path, options) {
  let response = await fetch(path, withKey(options));
  if (response.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key) {
      sessionStorage.setItem("steerlab-api-key", key.trim());
      response = await fetch(path, withKey(options));
    }
  }
  return response;
}

async function api(path, options = {}) {
  const response = await authorised(path, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function currentVector() {
  return state.vectors.find((v) => v.id === $("vector").value);
}

function strengthRange() {
  const vector = currentVector();
  if ($("mode").value === "ablate") return { min: 0, max: 1, step: 0.05, help: "fraction of the direction removed (1 = all)" };
  if (vector && vector.relative_scale) {
    const m = Math.min(0.5, state.maxRelative);
    return { min: -m, max: m, step: 0.01, help: "fraction of the layer's mean residual norm (0.15 = 15%)" };
  }
  return { min: -20, max: 20, step: 0.5, help: "absolute strength (this vector has no recorded residual norm)" };
}

function updateSliders() {
  const vector = currentVector();
  const layer = $("layer");
  if (vector) {
    layer.max = String(vector.layers.length - 1);
    if (Number(layer.value) > vector.layers.length - 1) layer.value = "0";
    layer.disabled = vector.layers.length < 2;
    $("layer-value").textContent = String(vector.layers[Number(layer.value)]);
  }
  const range = strengthRange();
  const strength = $("strength");
  strength.min = String(range.min);
  strength.max = String(range.max);
  strength.step = String(range.step);
  $("strength-value").textContent = Number(strength.value).toFixed(2);
  $("strength-help").textContent = "Strength: " + range.help + ".";
  $("steered-label").textContent = vector
    ? `(${vector.id}, layer ${$("layer-value").textContent}, ${$("mode").value} ${Number(strength.value).toFixed(2)})`
    : "";
}

function steering(alpha) {
  const vector = currentVector();
  return {
    vector: vector.id,
    alpha: alpha,
    layers: [vector.layers[Number($("layer").value)]],
    mode: $("mode").value,
    positions: $("positions").value,
    scale: vector.relative_scale ? "relative" : "absolute",
  };
}

// Stream one chat completion into an element, parsing the server-sent events as the OpenAI client does.
async function streamInto(element, extra) {
  element.textContent = "";
  element.dataset.state = "streaming";
  try {
    const response = await authorised("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        model: state.model,
        messages: [{ role: "user", content: $("prompt").value }],
        max_tokens: Number($("max-tokens").value),
        temperature: 0,
        stream: true,
        ...extra,
      }),
    });
    if (!response.ok) {
      const body = await response.json();
      throw new Error(body.error ? body.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) !== -1) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
        if (delta) element.textContent += delta;
      }
    }
    element.dataset.state = "done";
  } catch (error) {
    element.textContent = "Error: " + error.message;
    element.dataset.state = "error";
  }
}

async function generate() {
  if (!currentVector()) return;
  $("generate").disabled = true;
  $("status").textContent = "generating…";
  const alpha = Number($("strength").value);
  await Promise.all([streamInto($("unsteered"), {}), streamInto($("steered"), { steering: [steering(alpha)] })]);
  $("status").textContent = "";
  $("generate").disabled = false;
}

function plot(results) {
  const svg = $("plot");
  const W = 560, H = 260, L = 50, R = 15, T = 15, B = 40;
  const xs = results.map((r) => r.alpha), ys = results.map((r) => r.nll).filter((y) => y !== null);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y0 = 0, y1 = Math.max(1, ...ys) * 1.1;
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const parts = [
    `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#667085"/>`,
    `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#667085"/>`,
    `<text x="${(W + L) / 2}" y="${H - 6}" text-anchor="middle" font-size="12">strength</text>`,
    `<text x="14" y="${(H - B) / 2}" font-size="12" transform="rotate(-90 14 ${(H - B) / 2})" text-anchor="middle">NLL (nats/token)</text>`,
  ];
  for (const x of xs) parts.push(`<text x="${sx(x)}" y="${H - B + 16}" text-anchor="middle" font-size="11">${x.toFixed(2)}</text>`);
  for (let k = 0; k <= 4; k++) {
    const y = y0 + ((y1 - y0) * k) / 4;
    parts.push(`<text x="${L - 6}" y="${sy(y) + 4}" text-anchor="end" font-size="11">${y.toFixed(1)}</text>`);
  }
  const points = results.filter((r) => r.nll !== null).map((r) => `${sx(r.alpha)},${sy(r.nll)}`);
  parts.push(`<polyline fill="none" stroke="#2457c5" stroke-width="2" points="${points.join(" ")}"/>`);
  for (const r of results) {
    if (r.nll !== null) parts.push(`<circle class="point" cx="${sx(r.alpha)}" cy="${sy(r.nll)}" r="4" fill="#2457c5"/>`);
  }
  svg.innerHTML = parts.join("");
}

async function sweep() {
  if (!currentVector()) return;
  $("sweep").disabled = true;
  $("status").textContent = "sweeping…";
  const range = strengthRange();
  const top = Math.abs(Number($("strength").value)) || range.max / 2;
  const alphas = $("mode").value === "ablate" ? [0, 0.25, 0.5, 0.75, 1] : [-top, -top / 2, 0, top / 2, top];
  const s = steering(0);
  try {
    const body = await api("/v1/sweep", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        prompt: $("prompt").value, vector: s.vector, alphas: alphas.map((a) => Number(a.toFixed(4))),
        layers: s.layers, mode: s.mode, positions: s.positions, scale: s.scale,
        max_tokens: Math.min(24, Number($("max-tokens").value)),
      }),
    });
    $("sweep-section").hidden = false;
    plot(body.results);
    const rows = body.results.map((r) => {
      const tr = document.createElement("tr");
      for (const cell of [r.alpha.toFixed(2), r.nll === null ? "-" : r.nll.toFixed(2), r.text]) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.appendChild(td);
      }
      return tr;
    });
    $("sweep-table").querySelector("tbody").replaceChildren(...rows);
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = "Sweep failed: " + error.message;
  }
  $("sweep").disabled = false;
}

async function init() {
  const config = await api("/v1/playground/config");
  state.model = config.model;
  state.maxRelative = config.max_relative_alpha;
  $("model").textContent = config.model;
  $("max-tokens").max = String(config.max_tokens);
  const listing = await api("/v1/vectors");
  state.vectors = listing.data;
  const select = $("vector");
  select.replaceChildren(
    ...state.vectors.map((v) => {
      const option = document.createElement("option");
      option.value = v.id;
      option.textContent = `${v.id} (${v.method}, layers ${v.layers.join(",")})`;
      return option;
    }),
  );
  if (!state.vectors.length) $("status").textContent = "No vectors yet: upload one with POST /v1/vectors.";
  for (const id of ["vector", "mode", "layer", "strength"]) $(id).addEventListener("input", updateSliders);
  $("generate").addEventListener("click", generate);
  $("sweep").addEventListener("click", sweep);
  updateSliders();
  document.body.dataset.ready = "true";
}

init().catch((error) => {
  $("status").textContent = "Could not reach the server: " + error.message;
});

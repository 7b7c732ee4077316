// Harmonixr's page: drop a MIDI file → composers, nearest pieces, the corpus map, the timeline;
// two files → same composer? Plain JavaScript, no build step; everything from this server.
"use strict";

const UNKNOWN_COLOUR = "#9aa0a6";
const OTHER_COLOUR = "#b4b4b4";
const INK = [27, 42, 74]; // piano-roll notes
const state = { health: null, corpus: null, last: null, request: null };
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ talking to the server

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error("The server cannot be reached: is `harmonixr serve` still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) throw new Error(problemText(response, body));
  return body;
}

function problemText(response, body) {
  if (body && typeof body.detail === "string") {
    const text = body.detail;
    return /[.!?]$/.test(text) ? text : `${text}.`;
  }
  if (body && Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  if (response.status === 503) {
    const wait = response.headers.get("Retry-After") || "a few";
    return `The server is busy; try again in ${wait} seconds.`;
  }
  return `The server answered ${response.status} ${response.statusText}.`;
}

// ------------------------------------------------------------------ small helpers

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function percent(p) {
  if (p < 0.001) return "<0.1%";
  if (p > 0.999) return ">99.9%";
  return (100 * p).toFixed(p < 0.1 || p > 0.9 ? 1 : 0) + "%";
}

function clock(seconds) {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

function megabytes(bytes) {
  return `${+(bytes / 1048576).toFixed(1)} MB`;
}

function readable(title) {
  return title.replaceAll("_", " "); // corpus names such as Piano_Sonatas_26-1
}

function colourOf(composer) {
  if (composer === "unknown") return UNKNOWN_COLOUR;
  return (state.health && state.health.colours[composer]) || OTHER_COLOUR;
}

function textColourOn(hex) {
  const n = parseInt(hex.slice(1), 16);
  const [r, g, b] = [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  return 0.299 * r + 0.587 * g + 0.114 * b > 150 ? "#1c222b" : "#ffffff";
}

function showError(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function setStatus(text, busy) {
  const node = $("status");
  node.textContent = text;
  node.classList.toggle("busy", Boolean(busy));
}

const SCORE = /\.(musicxml|mxl|xml|krn|mei)$/i;

function tooLarge(file) {
  const key = SCORE.test(file.name) ? "max_score_bytes" : "max_upload_bytes";
  const limit = state.health ? state.health[key] : Infinity;
  return file.size > limit ? `${file.name} is larger than the ${megabytes(limit)} limit.` : "";
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    const health = await api("/api/health");
    state.health = health;
    const composers = health.composers.length;
    $("model").textContent =
      `Model: ${health.model} · ${health.index_size} distinct files indexed · ` +
      `${composers} named composer${composers === 1 ? "" : "s"}`;
    $("limit").textContent = megabytes(health.max_upload_bytes) + " (scores " +
      megabytes(health.max_score_bytes) + ")";
    $("n-composers").textContent = String(composers);
    if (!health.map) {
      // the reason (and how to make one) is for whoever runs the server: it is in its log
      $("map-missing").textContent = "No corpus map ships with this model, so none is shown.";
      $("map-missing").hidden = false;
    }
  } catch (err) {
    $("model").textContent = "";
    showError($("error"), err.message);
  }
}

// ------------------------------------------------------------------ one file

async function analyze(file) {
  showError($("error"), "");
  // a newer file replaces an older one: abort the older request (the server stops its work
  // when the client hangs up) and never draw an answer that is no longer the latest
  if (state.request) state.request.abort();
  state.request = null;
  const big = tooLarge(file);
  if (big) {
    $("results").hidden = true;
    setStatus("");
    showError($("error"), big);
    return;
  }
  const request = new AbortController();
  state.request = request;
  const current = () => state.request === request;
  setStatus(`Reading ${file.name}…`, true);
  $("results").setAttribute("aria-busy", "true");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    // windows of the model's crop, side by side: each one is also a crop of the whole piece
    const crop = state.health ? state.health.crop_s : null;
    const windows = crop ? `&window=${crop}&hop=${crop}` : "";
    const result = await api(`/api/analyze?k=5&n=10${windows}`, {
      method: "POST",
      body: form,
      signal: request.signal,
    });
    if (!current()) return;
    state.last = result;
    await show(result, current);
    if (!current()) return;
    setStatus(`${result.file}: ${clock(result.seconds)} of music analysed.`);
  } catch (err) {
    if (!current() || err.name === "AbortError") return;
    setStatus("");
    $("results").hidden = true;
    showError($("error"), err.message);
  } finally {
    if (current()) {
      $("results").removeAttribute("aria-busy");
      state.request = null;
    }
  }
}

async function show(result, current = () => true) {
  const hasMap = Boolean(state.health && state.health.map && result.position);
  $("results").hidden = false;
  document.querySelector(".page").classList.toggle("no-map", !hasMap);
  $("map-card").hidden = !hasMap;
  $("piece-name").textContent = result.file;
  $("window-s").textContent = String(result.timeline.window_s);
  drawKnownWork(result.identified);
  drawBars(result.attribution);
  drawNearest($("every-rendition").checked ? result.similar_all : result.similar);
  drawTimeline();
  drawPassageTable(result.timeline.passages);
  if (hasMap) await drawMap(result, current);
}

// a known work first: the piece is a rendition of one the index holds, or it is not
function drawKnownWork(work) {
  const line = $("known-work");
  line.hidden = !work;
  if (!work) return;
  line.classList.toggle("found", work.known);
  line.textContent = work.known
    ? work.text
    : "No known work: no piece in the index shares enough of its melody.";
  line.title = work.path
    ? `closest indexed piece: ${work.path} (melodic overlap ${work.overlap.toFixed(2)})`
    : "";
}

function drawBars(attribution) {
  const list = $("bars");
  list.replaceChildren();
  // where "someone else" did not work held out, it is no answer: say what the answer means
  const note = $("open-set-note");
  // (not under an answer that follows from a known work: the work, not the model, says who)
  const own = state.health && attribution.length > 0 && !attribution[0].from_work;
  const withdrawn = own && state.health.open_set === false;
  const newWork = own && state.health.new_work_note ? `${state.health.new_work_note}.` : "";
  note.hidden = !withdrawn && !newWork;
  if (withdrawn) {
    const top = attribution[0];
    note.textContent =
      `Closest named composer: ${top.composer} (${percent(top.probability)}); ` +
      `${state.health.open_set_note}. ` +
      newWork.charAt(0).toUpperCase() +
      newWork.slice(1);
  } else if (newWork) {
    note.textContent = newWork.charAt(0).toUpperCase() + newWork.slice(1);
  }
  attribution.forEach((a, i) => {
    const name = a.known || a.barely_known ? a.composer : "Someone else";
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * a.probability).toFixed(2)}%`;
    if (a.known) fill.style.background = colourOf(a.composer);
    // the first entry is the answer; barely known composers are shown, never named
    const pct = a.barely_known ? "barely known" : percent(a.probability);
    const label = `${i === 0 ? "Answer: " : ""}${name}: ${pct}` +
      (a.from_work ? ` (from the known work ${a.from_work})` : "");
    const cls = a.barely_known ? "barely" : a.known ? "known" : "unknown";
    list.append(
      el(
        "li",
        { class: i === 0 ? `${cls} answer` : cls, "aria-label": label },
        el(
          "span",
          { class: "name", title: a.from_work ? `${name}, from the known work ${a.from_work}` : name },
          name,
          a.from_work ? el("span", { class: "from-work" }, " · known work") : "",
        ),
        el("span", { class: "track", "aria-hidden": "true" }, fill),
        el("span", { class: "pct", "aria-hidden": "true" }, pct),
      ),
    );
  });
}

function drawNearest(matches) {
  const body = $("nearest").querySelector("tbody");
  body.replaceChildren();
  matches.forEach((m, i) => {
    const dot = el("span", { class: "dot", "aria-hidden": "true" });
    dot.style.background = colourOf(m.composer);
    body.append(
      el(
        "tr",
        {},
        el("td", { class: "num" }, i + 1),
        el("td", { class: "composer" }, dot, m.composer),
        el(
          "td",
          { class: "title", title: m.path },
          readable(m.title || m.path),
          el("span", { class: "who" }, [m.performer, m.source].filter(Boolean).join(" · ")),
        ),
        el(
          "td",
          { class: "num", title: `cosine similarity ${m.similarity.toFixed(3)}` },
          m.same_composer == null ? m.similarity.toFixed(3) : percent(m.same_composer),
        ),
      ),
    );
  });
}

// ------------------------------------------------------------------ piano roll and timeline

function topOf(passage) {
  let best = "unknown";
  let p = passage.unknown;
  for (const [composer, q] of Object.entries(passage.probabilities)) {
    if (q > p) [best, p] = [composer, q];
  }
  return [best, p];
}

function sizeCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(height * ratio));
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return [ctx, width, height];
}

function drawRoll(roll) {
  const [ctx, width, height] = sizeCanvas($("roll"));
  ctx.clearRect(0, 0, width, height);
  const bytes = Uint8Array.from(atob(roll.data), (c) => c.charCodeAt(0));
  const image = new ImageData(roll.columns, roll.pitches);
  for (let r = 0; r < roll.pitches; r++) {
    const y = roll.pitches - 1 - r; // high notes at the top
    for (let c = 0; c < roll.columns; c++) {
      const v = bytes[r * roll.columns + c];
      if (!v) continue;
      const k = 4 * (y * roll.columns + c);
      image.data[k] = INK[0];
      image.data[k + 1] = INK[1];
      image.data[k + 2] = INK[2];
      image.data[k + 3] = Math.round(70 + (185 * v) / roll.max_value);
    }
  }
  const off = document.createElement("canvas");
  off.width = roll.columns;
  off.height = roll.pitches;
  off.getContext("2d").putImageData(image, 0, 0);
  // a faint line at every C, so the octaves can be read; the notes over it; labels on top
  const cs = [];
  for (let r = 0; r < roll.pitches; r++) {
    const note = roll.low_note + r;
    if (note % 12 === 0) cs.push([note, height - ((r + 0.5) / roll.pitches) * height]);
  }
  ctx.fillStyle = "#e7e3d8";
  for (const [, y] of cs) ctx.fillRect(0, Math.round(y), width, 1);
  ctx.imageSmoothingEnabled = roll.columns > width;
  ctx.drawImage(off, 0, 0, width, height);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (const [note, y] of cs) {
    const label = `C${note / 12 - 1}`;
    const yy = Math.max(6, y - 6);
    ctx.fillStyle = "rgba(251, 250, 246, 0.85)";
    ctx.fillRect(1, yy - 6, ctx.measureText(label).width + 4, 12);
    ctx.fillStyle = "#8a867c";
    ctx.fillText(label, 3, yy);
  }
}

function niceStep(seconds, width) {
  const most = Math.max(2, Math.floor(width / 70));
  for (const step of [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]) {
    if (seconds / step <= most) return step;
  }
  return 7200;
}

function drawStrip(result) {
  const canvas = $("strip");
  const [ctx, width, height] = sizeCanvas(canvas);
  ctx.clearRect(0, 0, width, height);
  const total = result.roll.seconds || 1;
  const band = 26;
  ctx.font = "600 11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  // the last window ends at the piece's end and so overlaps the one before: each passage is
  // drawn from where the previous one ended, so that neither band nor label overprints
  let previous = 0;
  const drawn = [];
  for (const p of result.timeline.passages) {
    const [composer, prob] = topOf(p);
    const x0 = (Math.max(p.start_s, previous) / total) * width;
    const x1 = Math.max(x0 + 1, (p.end_s / total) * width);
    previous = Math.max(previous, p.end_s);
    drawn.push([Math.round(x0 * 10) / 10, Math.round(x1 * 10) / 10]);
    const colour = colourOf(composer);
    ctx.fillStyle = colour;
    ctx.fillRect(x0, 0, x1 - x0, band);
    if (composer === "unknown") {
      ctx.fillStyle = "rgba(255,255,255,0.35)";
      for (let x = x0 - band; x < x1; x += 8) {
        ctx.beginPath();
        ctx.moveTo(Math.max(x, x0), Math.max(0, x0 - x));
        ctx.lineTo(Math.min(x + band, x1), band - Math.max(0, x + band - x1));
        ctx.lineTo(Math.min(x + band + 3, x1), band - Math.max(0, x + band + 3 - x1));
        ctx.lineTo(Math.max(x + 3, x0), Math.max(0, x0 - x - 3));
        ctx.fill();
      }
    }
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(Math.round(x1) - 1, 0, 1, band); // a hairline between passages
    const name = composer === "unknown" ? "someone else" : composer.split(" ").pop();
    const label = [`${name} ${percent(prob)}`, percent(prob)].find(
      (text) => ctx.measureText(text).width + 8 < x1 - x0,
    );
    if (label) {
      ctx.fillStyle = textColourOn(colour);
      ctx.fillText(label, x0 + 4, band / 2);
    }
  }
  canvas.dataset.bands = JSON.stringify(drawn); // where each passage was drawn, in CSS px
  // the time axis
  ctx.fillStyle = "#5b6470";
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const step = niceStep(total, width);
  for (let t = 0; t <= total + 1e-6; t += step) {
    const x = (t / total) * width;
    ctx.fillRect(Math.min(Math.round(x), width - 1), band, 1, 5);
    const text = clock(t);
    const w = ctx.measureText(text).width;
    ctx.fillText(text, Math.min(Math.max(0, x - w / 2), width - w), band + 8);
  }
  canvas.onmousemove = (event) => {
    const t = ((event.offsetX || 0) / width) * total;
    const p = result.timeline.passages.find((q) => t >= q.start_s && t <= q.end_s);
    if (!p) return;
    const [composer, prob] = topOf(p);
    const name = composer === "unknown" ? "someone else" : composer;
    canvas.title = `${clock(p.start_s)}–${clock(p.end_s)}: ${name} ${percent(prob)}`;
  };
}

function drawLegend(passages) {
  const seen = new Map();
  for (const p of passages) {
    const [composer] = topOf(p);
    seen.set(composer, (seen.get(composer) || 0) + 1);
  }
  const legend = $("legend");
  legend.replaceChildren();
  for (const [composer, n] of [...seen].sort((a, b) => b[1] - a[1])) {
    const chip = el("span", { class: composer === "unknown" ? "chip unknown" : "chip" });
    if (composer !== "unknown") chip.style.background = colourOf(composer);
    const name = composer === "unknown" ? "someone else" : composer;
    legend.append(el("li", {}, chip, `${name} (${n} passage${n === 1 ? "" : "s"})`));
  }
}

function drawTimeline() {
  const result = state.last;
  if (!result) return;
  drawRoll(result.roll);
  drawStrip(result);
  drawLegend(result.timeline.passages);
}

function drawPassageTable(passages) {
  const body = $("passages").querySelector("tbody");
  body.replaceChildren();
  for (const p of passages) {
    const [composer, prob] = topOf(p);
    body.append(
      el(
        "tr",
        {},
        el("td", {}, clock(p.start_s)),
        el("td", {}, clock(p.end_s)),
        el("td", {}, composer === "unknown" ? "someone else" : composer),
        el("td", { class: "num" }, percent(prob)),
        ...(openSet() ? [el("td", { class: "num" }, percent(p.unknown))] : []),
      ),
    );
  }
  for (const th of document.querySelectorAll(".unknown-col")) th.hidden = !openSet();
}

function openSet() {
  return !state.health || state.health.open_set !== false;
}

// ------------------------------------------------------------------ the map

let plotlyLoading = null;

function loadPlotly() {
  if (window.Plotly) return Promise.resolve();
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const script = el("script", { src: "/vendor/plotly.min.js" });
      script.onload = resolve;
      script.onerror = () => reject(new Error("plotly.js could not be loaded from this server"));
      document.head.append(script);
    });
  }
  return plotlyLoading;
}

async function drawMap(result, current = () => true) {
  try {
    if (!state.corpus) state.corpus = await api("/api/map");
    await loadPlotly();
  } catch (err) {
    if (!current()) return;
    $("map-card").hidden = true;
    document.querySelector(".page").classList.add("no-map");
    showError($("error"), `The map cannot be shown: ${err.message}`);
    return;
  }
  const corpus = state.corpus;
  const groups = new Map();
  corpus.composers.forEach((composer, i) => {
    const key = corpus.colours[composer] ? composer : "other";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(i);
  });
  const order = [...Object.keys(corpus.colours).filter((c) => groups.has(c))];
  if (groups.has("other")) order.push("other");
  const traces = order.map((key) => {
    const rows = groups.get(key);
    return {
      type: "scatter3d",
      mode: "markers",
      name: key,
      x: rows.map((i) => corpus.x[i]),
      y: rows.map((i) => corpus.y[i]),
      z: rows.map((i) => corpus.z[i]),
      text: rows.map((i) => `${corpus.titles[i]}<br>${corpus.composers[i]}`),
      hovertemplate: "%{text}<extra></extra>",
      marker: { size: 3.5, color: corpus.colours[key] || OTHER_COLOUR, opacity: 0.65 },
    };
  });
  const pos = result.position;
  traces.push({
    type: "scatter3d",
    mode: "markers+text",
    name: "your piece",
    x: [pos.x],
    y: [pos.y],
    z: [pos.z],
    text: [shortName(result.file)],
    textposition: "top center",
    textfont: { size: 13, color: "#1c222b" },
    hovertemplate: "%{text}<extra>your piece</extra>",
    marker: { size: 9, color: "#ffd400", symbol: "diamond", line: { color: "#000000", width: 2 } },
  });
  const axis = { showticklabels: false, title: { text: "" }, showspikes: false, gridcolor: "#e6e3dc", zerolinecolor: "#e6e3dc" };
  const layout = {
    legend: { orientation: "h", x: 0, y: 0, itemsizing: "constant", bgcolor: "rgba(255,255,255,0.7)" },
    margin: { l: 0, r: 0, t: 0, b: 0 },
    paper_bgcolor: "rgba(0,0,0,0)",
    showlegend: true,
    scene: { xaxis: axis, yaxis: axis, zaxis: axis, camera: { eye: { x: 1.25, y: 1.25, z: 0.75 }, center: { x: 0, y: 0, z: -0.12 } } },
    uirevision: "keep",
  };
  // plotly's legend (click a name to hide it) where there is room; on a phone an HTML one
  // below the plot, so that the legend does not cover the map
  const wide = $("map").clientWidth >= 600;
  layout.showlegend = wide;
  drawMapLegend(wide ? [] : order, corpus.colours);
  const config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage"] };
  // each file gets a fresh plot, as the first one did (reusing the scene shrank the piece's
  // label on later files); the camera the reader chose is carried over
  if (!current()) return; // a newer file arrived while the map's data or plotly loaded
  const gd = $("map");
  const camera = gd.layout && gd.layout.scene && gd.layout.scene.camera;
  if (camera) layout.scene.camera = camera;
  window.Plotly.purge(gd);
  await window.Plotly.newPlot(gd, traces, layout, config);
}

function shortName(name) {
  // a long file name would crowd the 3-D scene: keep its start and end
  return name.length <= 28 ? name : `${name.slice(0, 16)}…${name.slice(-10)}`;
}

function drawMapLegend(names, colours) {
  const legend = $("map-legend");
  legend.replaceChildren();
  legend.hidden = names.length === 0;
  for (const name of names) {
    const chip = el("span", { class: "chip" });
    chip.style.background = colours[name] || OTHER_COLOUR;
    legend.append(el("li", {}, chip, name));
  }
  if (names.length) {
    const star = el("span", { class: "chip star", "aria-hidden": "true" });
    legend.append(el("li", {}, star, "your piece"));
  }
}

// ------------------------------------------------------------------ two files

async function compare(event) {
  event.preventDefault();
  const a = $("file-a").files[0];
  const b = $("file-b").files[0];
  const error = $("verify-error");
  showError(error, "");
  $("verdict").hidden = true;
  if (!a || !b) {
    showError(error, "Choose two MIDI files to compare.");
    return;
  }
  const big = tooLarge(a) || tooLarge(b);
  if (big) {
    showError(error, big);
    return;
  }
  const form = new FormData();
  form.append("a", a, a.name);
  form.append("b", b, b.name);
  const button = $("compare");
  button.disabled = true;
  button.textContent = "Comparing…";
  try {
    const v = await api("/api/verify", { method: "POST", body: form });
    const verdict = $("verdict");
    verdict.className = `verdict ${v.same_composer ? "same" : "different"}`;
    verdict.replaceChildren(
      el("strong", {}, v.same_composer ? "Probably the same composer" : "Probably different composers"),
      el(
        "span",
        { class: "detail" },
        `Probability that ${a.name} and ${b.name} share a composer: ${percent(v.probability)} ` +
          `(similarity of the two pieces ${v.similarity.toFixed(3)}).`,
      ),
    );
    verdict.hidden = false;
  } catch (err) {
    showError(error, err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Compare";
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files[0]) analyze(input.files[0]);
    input.value = ""; // the same file may be chosen again
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) analyze(file);
  });
  // a file dropped beside the zone is not opened by the browser in place of the page
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("verify-form").addEventListener("submit", compare);
  $("every-rendition").addEventListener("change", () => {
    if (state.last) {
      drawNearest($("every-rendition").checked ? state.last.similar_all : state.last.similar);
    }
  });
  let pending = 0;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(drawTimeline, 120);
  });
}

wire();
start();

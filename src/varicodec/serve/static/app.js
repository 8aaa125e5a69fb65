// varicodec serve: the comparison page. Plain JavaScript, no libraries, no network but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { source: null, job: null, shown: null, result: null, info: null, zoom: "fit", swipe: 50, polling: 0 };
const LABELS = { ours: "Ours", jpeg: "JPEG", webp: "WebP", avif: "AVIF" };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

const fmtInt = (n) => n.toLocaleString("en-US").replace(/,/g, "\u202f");
const fmtSec = (s) => (s < 0.1 ? `${(s * 1000).toFixed(1)} ms` : `${s.toFixed(2)} s`);
const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${fmtInt(n)} B`);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) throw new Error((body && body.error) || `the server answered ${r.status}`);
  return body;
}

// ------------------------------------------------------------------ setup
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`Cannot reach the varicodec server: ${e.message}`);
    return;
  }
  const m = state.info.model;
  const chips = [m.name, m.variable_rate ? "variable rate" : "fixed rate"];
  if (m.gated) chips.push("channel gating");
  if (m.lmbda_range) chips.push(`λ ${m.lmbda_range[0]}–${m.lmbda_range[1]}`);
  $("model").replaceChildren(...chips.map((t) => el("span", { class: "chip", text: t })));
  const lim = state.info.limits;
  $("limits").textContent =
    `Up to ${fmtBytes(lim.max_upload_bytes)} and ${(lim.max_pixels / 1e6).toFixed(1)} megapixels.`;
  for (const [name, desc] of Object.entries(state.info.samples)) {
    const b = el("button", { type: "button", title: desc, "data-sample": name, text: desc.split(",")[0] });
    b.addEventListener("click", () => choose({ sample: name, label: desc.split(",")[0] }));
    $("sample-buttons").append(b, " ");
  }
  if (m.refine && m.refine.available) $("refine-row").hidden = false;
  if (!m.variable_rate) {
    document.querySelector(".target").append(el("div", { class: "hint",
      text: "This model is fixed-rate: it codes at its one λ whatever the target; the other codecs match its size." }));
  }
  $("go").disabled = false;
}

function target() {
  const kind = document.querySelector("input[name=target]:checked").value;
  const refine = kind === "quality" && !$("refine-row").hidden && $("refine").checked ? 50 : 0;
  return { kind, value: $(kind).value, refine };
}

for (const r of document.querySelectorAll("input[name=target]")) {
  r.addEventListener("change", () => {
    for (const row of document.querySelectorAll(".target-row")) row.hidden = row.dataset.for !== r.value;
  });
}
$("quality").addEventListener("input", (e) => { $("quality-out").textContent = Number(e.target.value).toFixed(1); });
$("jpeg").addEventListener("input", (e) => { $("jpeg-out").textContent = e.target.value; });
$("go").addEventListener("click", () => {
  if (state.source) run();
  else showError("Choose an image file, drop one on the page, or pick a sample first.");
});

$("file").addEventListener("change", (e) => {
  const f = e.target.files[0];
  if (f) choose({ file: f, label: f.name });
  e.target.value = "";
});

const drop = $("drop");
for (const t of ["dragenter", "dragover"]) {
  document.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const t of ["dragleave", "dragend"]) {
  document.addEventListener(t, (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
}
document.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer && e.dataTransfer.files[0];
  if (f) choose({ file: f, label: f.name });
});

function choose(source) {
  state.source = source;
  run();
}

// -------------------------------------------------------------------- run
async function run() {
  const src = state.source;
  const t = target();
  showError("");
  if (src.file && state.info && src.file.size > state.info.limits.max_upload_bytes) {
    showError(`${src.file.name}: ${fmtBytes(src.file.size)} is over this server's upload limit of ${fmtBytes(state.info.limits.max_upload_bytes)}.`);
    return;
  }
  const poll = ++state.polling;
  document.body.dataset.state = "running";
  const form = new FormData();
  if (src.file) form.append("file", src.file, src.file.name);
  else form.append("sample", src.sample);
  form.append("target", t.kind);
  form.append("value", t.value);
  if (t.refine) form.append("refine", String(t.refine));
  $("go").disabled = true;
  setProgress(0, `Uploading ${src.label}…`);
  $("progress").hidden = false;
  try {
    const started = await api("/api/compare", { method: "POST", body: form });
    // a comparison still running for an earlier click is dropped; the shown one stays
    // usable (viewer, downloads) until the new results replace it
    if (state.job && state.job !== state.shown) forget(state.job);
    state.job = started.job;
    await follow(started.job, poll);
  } catch (e) {
    if (poll === state.polling) {
      showError(e.message);
      $("progress").hidden = true;
    }
  } finally {
    if (poll === state.polling) $("go").disabled = false;
  }
}

function setProgress(fraction, message) {
  $("bar-fill").style.width = `${Math.round(fraction * 100)}%`;
  $("progress-msg").textContent = message;
  $("progress-pct").textContent = `${Math.round(fraction * 100)} %`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function follow(job, poll) {
  let shown = false;
  for (;;) {
    if (poll !== state.polling) return;
    const s = await api(`/api/jobs/${job}`);
    if (poll !== state.polling) return;
    if (s.state === "error") throw new Error(s.error);
    setProgress(s.progress, s.message);
    if (s.result && !shown) {
      render(job, s.result);
      shown = true;
    }
    if (s.result && s.state === "done") {
      renderGating(s.result);
      document.body.dataset.state = "done";
      $("progress").hidden = true;
      return;
    }
    await sleep(250);
  }
}

// ----------------------------------------------------------------- render
function fileUrl(job, name, download) {
  return `/api/jobs/${job}/files/${name}${download ? "?download=1" : ""}`;
}

function forget(job) {
  fetch(`/api/jobs/${job}`, { method: "DELETE" }).catch(() => {});
}

function render(job, r) {
  if (state.shown && state.shown !== job) forget(state.shown);
  state.shown = job;
  state.result = r;
  document.body.dataset.state = "panels";
  const img = r.image;
  const ours = r.panels.find((p) => p.codec === "ours");
  $("summary").replaceChildren(
    el("span", { class: "name", text: img.name }),
    fact("size", `${img.width} × ${img.height}`),
    fact("target", r.target.label),
    fact("every file near", `${fmtInt(r.target.bytes)} bytes`),
    fact("λ", ours ? r.lmbda.toPrecision(4) : "–"),
    fact("server time", fmtSec(r.seconds)),
  );

  const panels = r.panels;
  const best = {
    psnr_db: Math.max(...panels.map((p) => p.psnr_db ?? -Infinity)),
    ms_ssim: Math.max(...panels.map((p) => p.ms_ssim ?? -Infinity)),
  };
  $("panels").replaceChildren(...panels.map((p) => panelCard(job, p, best)));

  const options = [["original", "Original"], ...panels.map((p) => [p.codec, LABELS[p.codec] || p.codec])];
  for (const id of ["left", "right"]) {
    const sel = $(id);
    sel.replaceChildren(...options.map(([v, t]) => el("option", { value: v, text: t })));
  }
  // at equal size, ours against JPEG first (the original is one click away)
  $("left").value = panels.some((p) => p.codec === "jpeg") ? "jpeg" : "original";
  $("right").value = "ours";
  updateViewer();

  const notes = r.notes || [];
  $("notes").replaceChildren(...notes.map((n) => el("li", { text: n })));
  $("gating").hidden = true;
  $("results").hidden = false;
}

function fact(name, value) {
  const b = el("b", { text: value });
  return el("span", { class: "fact" }, `${name}: `, b);
}

function panelCard(job, p, best) {
  const stats = el("dl", { class: "stats" });
  const row = (label, field, text, isBest) => {
    stats.append(el("dt", { text: label }),
      el("dd", { "data-field": field, class: isBest ? "best" : "", text }));
  };
  row("File", "bytes", `${fmtInt(p.bytes)} B`);
  row("Rate", "bpp", p.bpp == null ? "–" : `${p.bpp.toFixed(3)} bpp`);
  row("PSNR", "psnr_db", p.psnr_db == null ? "∞ (lossless)" : `${p.psnr_db.toFixed(2)} dB`,
    p.psnr_db != null && p.psnr_db === best.psnr_db);
  const ssimText = p.ms_ssim == null ? "n/a (< 161 px)"
    : `${p.ms_ssim.toFixed(4)} (${(-10 * Math.log10(Math.max(1e-12, 1 - p.ms_ssim))).toFixed(1)} dB)`;
  row("MS-SSIM", "ms_ssim", ssimText, p.ms_ssim != null && p.ms_ssim === best.ms_ssim);
  row("Encode", "encode_s", fmtSec(p.encode_s));
  row("Decode", "decode_s", fmtSec(p.decode_s));

  const thumb = el("div", { class: "thumb", title: "show in the viewer (right side; shift-click: left)" },
    el("img", { src: fileUrl(job, `${p.codec}.png`), alt: `${p.label} decoded`, loading: "lazy" }));
  thumb.addEventListener("click", (e) => {
    $(e.shiftKey ? "left" : "right").value = p.codec;
    updateViewer();
    $("stage-wrap").scrollIntoView({ behavior: "smooth", block: "nearest" });
  });
  const ext = p.extension;
  const downloads = el("div", { class: "downloads" },
    el("a", { href: fileUrl(job, `${p.codec}.${ext}`, true), download: "", text: `↓ .${ext}` }),
    el("a", { href: fileUrl(job, `${p.codec}.png`, true), download: "", text: "↓ decoded PNG" }));
  const title = p.codec === "ours" ? "Ours" : p.label;
  const setting = p.codec === "ours" ? `${p.label} · ${p.setting}` : p.setting;
  return el("article", { class: "card panel", "data-codec": p.codec },
    el("div", {}, el("h3", { text: title }), el("div", { class: "setting", text: setting })),
    thumb, stats, el("div", { class: "note", text: p.note || "" }), downloads);
}

function renderGating(r) {
  const g = r.gating;
  const box = $("gating");
  if (!g) { box.hidden = true; return; }
  if (g.skipped) {
    box.replaceChildren(el("h3", { text: "Channel gating" }), el("div", { class: "muted", text: g.skipped }));
    box.hidden = false;
    return;
  }
  const flop = (part, label) => {
    const d = g[part];
    return el("div", { class: "flop" },
      el("div", { class: "muted small", text: label }),
      el("div", { class: "big", "data-field": `${part}_saved`, text: `${(d.saved * 100).toFixed(1)} % fewer FLOPs` }),
      el("div", { class: "muted small",
        text: `${(d.flops / 1e9).toFixed(2)} of ${(d.dense_flops / 1e9).toFixed(2)} GFLOPs (${d.speedup.toFixed(2)}× fewer)` }));
  };
  const layers = g.layers.map((l) => el("div", { class: "layer" },
    el("code", { text: l.name }),
    el("div", { class: "lbar" }, el("div", { style: `width:${(l.sparsity * 100).toFixed(1)}%` })),
    el("span", { class: "v", text: `${(l.sparsity * 100).toFixed(0)} %` })));
  box.replaceChildren(
    el("h3", { text: "Channel gating at this λ" }),
    el("div", { class: "muted small",
      text: `Share of each layer's input channels switched off for this image (mean ${(g.mean_sparsity * 100).toFixed(1)} %), and the convolution FLOPs this saves against the same network computing every channel.` }),
    el("div", { class: "flops" }, flop("encoder", "Encoder (compress: g_a, h_a, h_s)"), flop("decoder", "Decoder (decompress: h_s, g_s)")),
    el("div", { class: "layers" }, ...layers));
  box.hidden = false;
}

// ----------------------------------------------------------------- viewer
function updateViewer() {
  if (!state.shown || !state.result) return;
  const pick = (id) => $(id).value;
  const src = (v) => fileUrl(state.shown, v === "original" ? "original.png" : `${v}.png`);
  const name = (v) => (v === "original" ? "Original" : LABELS[v] || v);
  $("img-left").src = src(pick("left"));
  $("img-right").src = src(pick("right"));
  $("tag-left").textContent = name(pick("left"));
  $("tag-right").textContent = name(pick("right"));
  applyZoom();
}
$("left").addEventListener("change", updateViewer);
$("right").addEventListener("change", updateViewer);

function applyZoom() {
  const stage = $("stage");
  const w = state.result ? state.result.image.width : 0;
  if (state.zoom === "fit") {
    const wrap = $("stage-wrap");
    const h = state.result ? state.result.image.height : 1;
    const maxH = Math.min(window.innerHeight * 0.7, 560);  // room for the panels below
    const fit = Math.min(wrap.clientWidth || w, w * (maxH / h));
    stage.style.width = `${Math.max(1, Math.floor(fit))}px`;
  } else {
    stage.style.width = `${w * Number(state.zoom)}px`;
  }
  stage.classList.toggle("zoomed", state.zoom !== "fit");
  stage.classList.toggle("pixelated", state.zoom !== "fit" && Number(state.zoom) >= 2);
  setSwipe(state.swipe);
}
for (const b of document.querySelectorAll(".zoom button")) {
  b.addEventListener("click", () => {
    state.zoom = b.dataset.zoom;
    for (const o of document.querySelectorAll(".zoom button")) o.classList.toggle("on", o === b);
    applyZoom();
  });
}
window.addEventListener("resize", () => { if (state.zoom === "fit") applyZoom(); });

function setSwipe(percent) {
  state.swipe = Math.min(100, Math.max(0, percent));
  $("img-right").style.clipPath = `inset(0 0 0 ${state.swipe}%)`;
  $("divider").style.left = `calc(${state.swipe}% - 1px)`;
}

(function dragging() {
  const stage = $("stage");
  const wrap = $("stage-wrap");
  let mode = null;
  let last = null;
  const swipeTo = (e) => {
    const r = stage.getBoundingClientRect();
    setSwipe(((e.clientX - r.left) / r.width) * 100);
  };
  stage.addEventListener("pointerdown", (e) => {
    const onDivider = e.target.closest && e.target.closest("#divider");
    mode = state.zoom === "fit" || onDivider ? "swipe" : "pan";
    last = { x: e.clientX, y: e.clientY };
    stage.setPointerCapture(e.pointerId);
    if (mode === "swipe") swipeTo(e);
    else stage.classList.add("panning");
  });
  stage.addEventListener("pointermove", (e) => {
    if (!mode) return;
    if (mode === "swipe") swipeTo(e);
    else {
      wrap.scrollLeft -= e.clientX - last.x;
      wrap.scrollTop -= e.clientY - last.y;
      last = { x: e.clientX, y: e.clientY };
    }
  });
  const end = () => { mode = null; stage.classList.remove("panning"); };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
})();

init();

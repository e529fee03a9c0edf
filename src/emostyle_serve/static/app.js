// The page of `emostyle serve` (emostyle_serve.ui): a photo or the webcam in, the styled result beside it.
// It calls the public API only (POST v1/stylize, v1/classify), by URLs relative to the page, so it works
// wherever the service is mounted (uvicorn, a Ray Serve route prefix). No framework, no build step.
import { EmotionTimeline } from "./smoother.js";

const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI);
const FORMATS = { "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/bmp": ".bmp",
                  "image/tiff": ".tif" };

let config = null; // ui/config.json: labels, emotions -> styles, temporal options, in_flight
const urls = {}; // blob: URLs in use, by element id (revoked when replaced)

// -- showing things ----------------------------------------------------------------------------------

function showError(err) {
  $("error").textContent = err.message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

/** An Error carrying what the API answered: its JSON message, and Retry-After for 429 and 503. */
async function apiError(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
  } catch { /* not JSON: the status says it */ }
  const retry = Number(response.headers.get("Retry-After") || 0);
  const err = new Error(`HTTP ${response.status}: ${message}` + (retry ? ` Retry after ${retry} s.` : ""));
  err.status = response.status;
  err.retryAfter = retry;
  return err;
}

/** fetch() that turns "no answer" into a readable error. */
async function post(path, body, type, signal) {
  try {
    return await fetch(api(path), { method: "POST", body, headers: { "Content-Type": type }, signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`The service did not answer (${err.message}).`);
  }
}

function setImage(id, blob) {
  if (urls[id]) URL.revokeObjectURL(urls[id]);
  urls[id] = URL.createObjectURL(blob);
  $(id).src = urls[id];
  $(id).hidden = false;
  return urls[id];
}

/** "angry=0.1,sad=0.9" (X-Emotion-Scores) -> {angry: "0.1", sad: "0.9"}, the API's text kept. */
function parseScores(header) {
  const scores = {};
  for (const kv of (header || "").split(",")) {
    const [k, v] = kv.split("=");
    if (k && v !== undefined) scores[k] = v;
  }
  return scores;
}

/** Seven bars; ``scores`` values may be numbers or the API's text (kept in data-score). */
function showScores(scores, note) {
  const list = $("scores");
  list.replaceChildren();
  $("scores-note").textContent = note || "";
  const values = config.labels.map((k) => (scores && k in scores ? Number(scores[k]) : NaN));
  const top = values.indexOf(Math.max(...values.filter((v) => !Number.isNaN(v))));
  config.labels.forEach((label, j) => {
    const li = document.createElement("li");
    li.dataset.label = label;
    li.dataset.score = scores && label in scores ? String(scores[label]) : "";
    if (j === top) li.className = "top";
    const name = document.createElement("span");
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = Number.isNaN(values[j]) ? "0" : `${(100 * values[j]).toFixed(1)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = Number.isNaN(values[j]) ? "-" : values[j].toFixed(3);
    li.append(name, bar, value);
    list.append(li);
  });
}

const SOURCES = { face: "(the largest face)", whole: "(no face found: the whole image)",
                  policy: "(no face found: the service's fixed emotion)", given: "(forced)" };

function showResult(emotion, source, style) {
  $("r-emotion").textContent = emotion;
  $("r-source").textContent = SOURCES[source] || `(${source})`;
  $("r-style").textContent = style || "-";
}

/** The face box [x, y, w, h] (pixels of a width x height image) over the original; null hides it. */
function showFace(box, width, height) {
  const face = $("face");
  face.hidden = !box || !width || !height;
  $("face-note").textContent = box ? "with the face that was classified" : "";
  if (face.hidden) return;
  const [x, y, w, h] = box;
  Object.assign(face.style, { left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
                              width: `${(100 * w) / width}%`, height: `${(100 * h) / height}%` });
}

// -- a photo --------------------------------------------------------------------------------------

const photo = { file: null, seq: 0, abort: null, classified: null };

function choose(file) {
  if (!file) return;
  stopWebcam();
  photo.file = file;
  photo.classified = null;
  $("video").hidden = true;
  setImage("original", file);
  stylizePhoto();
}

async function stylizePhoto() {
  if (!photo.file) return;
  const seq = ++photo.seq;
  if (photo.abort) photo.abort.abort(); // the answer to an older choice is not wanted any more
  photo.abort = new AbortController();
  const emotion = $("emotion").value;
  $("busy").hidden = false;
  clearError();
  try {
    const query = emotion ? `?emotion=${encodeURIComponent(emotion)}` : "";
    const r = await post(`v1/stylize${query}`, photo.file, photo.file.type || "application/octet-stream",
                         photo.abort.signal);
    if (!r.ok) throw await apiError(r);
    const blob = await r.blob();
    if (seq !== photo.seq) return;
    const h = (name) => r.headers.get(name);
    const source = h("X-Emotion-Source");
    const face = h("X-Face") ? h("X-Face").split(",").map(Number) : null;
    if (source !== "given") photo.classified = { scores: parseScores(h("X-Emotion-Scores")), face };
    const known = photo.classified;
    showResult(h("X-Emotion"), source, h("X-Style"));
    if (source === "given") {
      showScores(known && known.scores, known ? "Scores of the classification (not used: the emotion is forced)."
                                              : "Not classified: the emotion is forced.");
    } else {
      showScores(photo.classified.scores, "");
    }
    const url = setImage("styled", blob);
    const img = $("original");
    await img.decode().catch(() => {});
    showFace(known && known.face, img.naturalWidth, img.naturalHeight);
    const stem = (photo.file.name || "photo").replace(/\.[^.]*$/, "");
    Object.assign($("download"), { href: url, download: `${stem}-styled${FORMATS[blob.type] || ""}`, hidden: false });
  } catch (err) {
    if (seq === photo.seq && err.name !== "AbortError") showError(err);
  } finally {
    if (seq === photo.seq) $("busy").hidden = true;
  }
}

// -- the webcam: frames pipelined (at most config.in_flight), emotion smoothed as the video path does ------

const cam = { stream: null, running: false, gen: 0, timeline: null, index: 0, presented: 0, grabbed: 0,
              inFlight: 0, maxInFlight: 0, shown: -1, frames: 0, done: [], latencies: [], resumeAt: 0, t0: 0 };
const canvas = document.createElement("canvas");

async function startWebcam() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError(new Error("This browser gives this page no camera: getUserMedia needs https, or http on localhost."));
    return;
  }
  if (cam.running) return;
  clearError();
  $("cam-start").disabled = true;
  const video = $("video");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } } });
    video.srcObject = stream;
    await video.play();
  } catch (err) {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    showError(new Error(`No camera: ${err.name}: ${err.message}`));
    $("cam-start").disabled = false;
    return;
  }
  photo.seq++; // a photo's answer still on its way is not shown
  if (photo.abort) photo.abort.abort();
  Object.assign(cam, { stream, running: true, gen: cam.gen + 1, index: 0, presented: 0, grabbed: 0, maxInFlight: 0,
                       shown: -1, frames: 0, done: [], latencies: [], resumeAt: 0, t0: performance.now(),
                       timeline: new EmotionTimeline(config.labels, config.temporal, config.initial) });
  $("original").hidden = true;
  video.hidden = false;
  $("download").hidden = true;
  $("stats").hidden = false;
  $("cam-stop").disabled = false;
  showFace(null);
  updateStats();
  video.requestVideoFrameCallback(onVideoFrame);
}

function stopWebcam() {
  if (!cam.running) return;
  cam.running = false;
  cam.stream.getTracks().forEach((t) => t.stop());
  $("video").srcObject = null;
  $("cam-start").disabled = false;
  $("cam-stop").disabled = true;
}

function onVideoFrame(now, meta) {
  if (!cam.running) return;
  cam.presented = meta.presentedFrames;
  pump();
  $("video").requestVideoFrameCallback(onVideoFrame);
}

/** Send the newest camera frame while fewer than config.in_flight are out (back-pressure: no queue). */
function pump() {
  const now = performance.now();
  if (now < cam.resumeAt) return; // after a 429 / 503, until its Retry-After
  while (cam.running && cam.inFlight < config.in_flight && cam.presented > cam.grabbed) {
    cam.grabbed = cam.presented;
    sendFrame();
  }
}

function grab() {
  const video = $("video");
  const side = Number($("cam-side").value); // longer side of the frames sent (a CPU service keeps up with 320)
  const s = Math.min(1, side / Math.max(video.videoWidth, video.videoHeight));
  canvas.width = Math.round(video.videoWidth * s);
  canvas.height = Math.round(video.videoHeight * s);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const size = [canvas.width, canvas.height];
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => (blob ? resolve({ blob, size }) : reject(new Error("A camera frame could not be encoded."))),
    "image/jpeg", 0.9));
}

async function classifyFrame(blob) {
  const r = await post("v1/classify", blob, "image/jpeg");
  if (r.status === 422) { // no face with --no-face error: no evidence, the emotion holds (as the video path)
    const body = await r.clone().json().catch(() => ({}));
    if (body.error === "NoFaceError") return null;
  }
  if (!r.ok) throw await apiError(r);
  return r.json();
}

function sendFrame() {
  const gen = cam.gen;
  const i = cam.index++;
  const started = performance.now();
  const t = (started - cam.t0) / 1000;
  const forced = $("emotion").value;
  const reason = forced ? "" : cam.timeline.schedule(i, t); // in capture order, as the analysis stage
  const timeline = cam.timeline;
  const frame = grab();
  cam.inFlight++;
  cam.maxInFlight = Math.max(cam.maxInFlight, cam.inFlight);
  updateStats();
  const previous = cam.analysis || Promise.resolve();
  const decided = (async () => { // the analysis stage: one frame after another, in order
    const { blob, size } = await frame;
    await previous;
    if (forced) return { emotion: forced, source: "given", scores: null };
    if (reason) {
      const found = await classifyFrame(blob);
      timeline.observe(t, found);
      if (gen === cam.gen) showFace(found && found.face, size[0], size[1]);
    }
    return { ...timeline.decide(t), source: "smoothed" };
  })();
  cam.analysis = decided.catch(() => {});
  (async () => { // the style stage: up to config.in_flight frames at once
    try {
      const state = await decided;
      const { blob } = await frame;
      const r = await post(`v1/stylize?emotion=${encodeURIComponent(state.emotion)}`, blob, "image/jpeg");
      if (!r.ok) throw await apiError(r);
      const out = await r.blob();
      if (gen !== cam.gen || !cam.running || i < cam.shown) return; // stopped, or a newer frame is already up
      cam.shown = i;
      setImage("styled", out);
      showResult(state.emotion, state.source, r.headers.get("X-Style"));
      $("r-source").textContent = forced ? "(forced)" : "(smoothed over time, as the video path)";
      if (!forced) showScores(state.scores, "Scores smoothed over time; the style switches on a lead held.");
      const end = performance.now();
      cam.frames++;
      cam.done.push(end);
      cam.latencies.push(end - started);
      clearError();
    } catch (err) {
      if (gen !== cam.gen || !cam.running) return;
      showError(err);
      if (err.status === 429 || err.status === 503) cam.resumeAt = performance.now() + 1000 * (err.retryAfter || 1);
    } finally {
      cam.inFlight--;
      updateStats();
      if (cam.running) setTimeout(pump, Math.max(0, cam.resumeAt - performance.now()));
    }
  })();
}

function updateStats() {
  cam.done = cam.done.slice(-10); // the last 10 frames shown
  cam.latencies = cam.latencies.slice(-10);
  const span = cam.done.length > 1 ? (cam.done[cam.done.length - 1] - cam.done[0]) / 1000 : 0;
  const sorted = [...cam.latencies].sort((a, b) => a - b);
  $("fps").textContent = span > 0 ? ((cam.done.length - 1) / span).toFixed(1) : "-";
  $("latency").textContent = sorted.length ? sorted[Math.floor(sorted.length / 2)].toFixed(0) : "-";
  $("inflight").textContent = cam.inFlight;
  $("frames").textContent = cam.frames;
  Object.assign($("stats").dataset, { inFlight: cam.inFlight, maxInFlight: cam.maxInFlight, frames: cam.frames });
}

// -- start -----------------------------------------------------------------------------------------

async function start() {
  try {
    const r = await fetch(api("ui/config.json"));
    if (!r.ok) throw await apiError(r);
    config = await r.json();
  } catch (err) {
    $("status").textContent = "The service cannot be reached; trying again.";
    $("status").className = "down";
    showError(err);
    setTimeout(start, 5000);
    return;
  }
  clearError();
  for (const label of config.labels) {
    $("emotion").append(new Option(label, label));
  }
  $("limit").textContent = config.in_flight;
  $("demo-note").textContent = config.demo_note; // the service says what is untrained, from the manifest
  $("demo-note").hidden = !config.demo_note;
  for (const id of ["file", "emotion", "cam-start", "cam-side"]) $(id).disabled = false;
  showScores(null, "");
  watchReadiness();
}

async function watchReadiness() {
  let ready = false;
  try {
    ready = (await fetch(api("readyz"))).ok;
  } catch { /* shown below */ }
  $("status").textContent = ready ? "The service is ready." : "The service is loading its bundle...";
  $("status").className = ready ? "ready" : "down";
  if (!ready) setTimeout(watchReadiness, 2000);
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
$("emotion").addEventListener("change", () => { if (!cam.running) stylizePhoto(); });
$("cam-start").addEventListener("click", startWebcam);
$("cam-stop").addEventListener("click", stopWebcam);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (config) choose(e.dataTransfer.files[0]);
});
document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData ? e.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (file && config) {
    e.preventDefault();
    choose(file);
  }
});
start();

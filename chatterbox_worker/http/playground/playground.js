// The playground page: every control is a field of the public API's requests.
//
// Text that comes from the API or from voice names is only ever set with textContent
// (never innerHTML), so a voice called "<img src=x onerror=...>" shows as those characters.

import * as api from "./api.js";
import {
  PcmAssembler, StreamPlayer, decodeFile, drawWaveform, joinSamples, pcmBlob, readPcmStream,
  readSseStream, wavBlob,
} from "./audio.js";

const $ = (id) => document.getElementById(id);
const KNOBS = ["exaggeration", "cfg_weight", "temperature", "speed", "seed", "max_new_tokens"];
const INTEGER_KNOBS = new Set(["seed", "max_new_tokens"]);
// Formats the page writes itself from the streamed PCM, so the download is exactly what played.
const LOCAL_FORMATS = new Set(["wav", "pcm"]);
const EXTENSIONS = { mp3: "mp3", opus: "opus", aac: "aac", flac: "flac", wav: "wav", pcm: "pcm" };
const LOADING_RETRY_MS = 1500;
const SERVICE_UNAVAILABLE = 503;
const UNAUTHORIZED = 401;
const SHIPPED_NOTE = "Shipped with the worker: it cannot be deleted, so every deployment keeps its demo voices.";
// API field names (the error's "param") to the element showing that field's error, per form.
const SPEECH_ERRORS = {
  input: "err-input", text: "err-input", voice: "err-voice", voice_id: "err-voice", voice_name: "err-voice",
  model: "err-model", response_format: "err-response_format", exaggeration: "err-exaggeration",
  cfg_weight: "err-cfg_weight", temperature: "err-temperature", speed: "err-speed", seed: "err-seed",
  max_new_tokens: "err-max_new_tokens",
};
const UPLOAD_ERRORS = {
  file: "err-file", audio: "err-file", reference_audio: "err-file", name: "err-name", voice_name: "err-name",
  voice: "err-name", description: "err-description", voice_description: "err-description", gender: "err-gender",
};
const DELETE_ERRORS = { voice_id: "err-voice", voice: "err-voice" };

const state = {
  config: null,
  voices: [],
  models: [],
  clips: 0,
  audioContext: null,
  player: null,
  abort: null,
  lastSeed: null,
  deleteArmedFor: null,
  recording: null,
  recordedBlob: null,
};

// -- errors ---------------------------------------------------------------------------

function clearErrors(map) {
  for (const id of new Set([...Object.values(map), "err-general"])) {
    $(id).textContent = "";
  }
}

/** Show an error as the API worded it, beside the field it names (else at the top). */
function showError(error, map) {
  if (error.name === "AbortError") {
    return;
  }
  const target = (error.param && map[error.param]) || "err-general";
  $(target).textContent = error.message;
  if (error.status === UNAUTHORIZED) {
    askForKey(error.message);
  }
}

function setStatus(text) {
  $("status").textContent = text;
}

// -- the API key ----------------------------------------------------------------------

let keyEntered = null;

function askForKey(message = "") {
  $("key-panel").hidden = false;
  $("err-api-key").textContent = message;
  $("api-key").focus();
  return new Promise((resolve) => {
    keyEntered = resolve;
  });
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  api.setApiKey($("api-key").value.trim());
  $("api-key").value = "";
  $("key-panel").hidden = true;
  if (keyEntered) {
    keyEntered();
    keyEntered = null;
  }
  loadLists();
});

// -- voices and models ----------------------------------------------------------------

function voiceLabel(voice) {
  const saved = voice.deletable ? " · saved" : "";
  return `${voice.name || voice.id} (${voice.id})${saved}`;
}

function renderVoices(selectId) {
  const select = $("voice");
  const wanted = selectId || select.value;
  const query = $("voice-search").value.trim().toLowerCase();
  const shown = state.voices.filter((v) => !query || `${v.name} ${v.id}`.toLowerCase().includes(query));
  select.replaceChildren(...shown.map((voice) => {
    const option = document.createElement("option");
    option.value = voice.id;
    option.textContent = voiceLabel(voice);
    return option;
  }));
  if (shown.some((v) => v.id === wanted)) {
    select.value = wanted;
  }
  describeVoice();
}

function selectedVoice() {
  return state.voices.find((v) => v.id === $("voice").value) || null;
}

function describeVoice() {
  const voice = selectedVoice();
  const button = $("delete-voice");
  state.deleteArmedFor = null;
  button.textContent = "Delete this voice";
  button.disabled = !voice || !voice.deletable;
  $("voice-note").textContent = !voice ? "No voice matches the search." : voice.deletable
    ? `Saved voice, ${Number(voice.duration || 0).toFixed(1)} s reference.` : SHIPPED_NOTE;
}

async function loadVoices(selectId) {
  const listing = await api.listVoices();
  state.voices = listing.voices || [];
  renderVoices(selectId);
}

function renderModels() {
  const select = $("model");
  select.replaceChildren(...state.models.map((model) => {
    const option = document.createElement("option");
    option.value = model.id;
    option.textContent = model.loaded ? `${model.id} (${model.variant})` : `${model.id} (${model.variant}, not loaded)`;
    option.disabled = !model.loaded;
    return option;
  }));
  const loaded = state.models.filter((m) => m.loaded);
  const preferred = loaded.find((m) => m.id === "chatterbox") || loaded[0];
  if (preferred) {
    select.value = preferred.id;
  }
  applyVariantDefaults();
}

async function loadModels() {
  state.models = (await api.listModels()).data || [];
  renderModels();
}

/** Fill the voice and model lists; while the worker loads (503), try again shortly. */
async function loadLists() {
  try {
    await Promise.all([loadVoices(), loadModels()]);
    setStatus(`Ready: ${state.voices.length} voices.`);
    $("err-general").textContent = "";
  } catch (error) {
    if (error.status === SERVICE_UNAVAILABLE) {
      setStatus(error.message);
      setTimeout(loadLists, LOADING_RETRY_MS);
      return;
    }
    setStatus("The worker refused the page's first requests.");
    showError(error, {});
  }
}

// -- the knobs --------------------------------------------------------------------------

function applyBounds() {
  const { bounds } = state.config;
  for (const knob of KNOBS) {
    const input = $(knob);
    const range = bounds[knob] || {};
    const low = range.minimum ?? range.exclusiveMinimum;
    if (low !== undefined) input.min = String(low);
    if (range.maximum !== undefined) input.max = String(range.maximum);
  }
  $("text").maxLength = state.config.max_input_chars;
  $("speed").value = String(state.config.default_speed);
  const { minimum, maximum } = state.config.voice_seconds;
  $("upload-hint").textContent = `Clear speech from one speaker, at least ${minimum} s; past ${maximum} s it is cut.`;
}

function applyVariantDefaults() {
  const model = state.models.find((m) => m.id === $("model").value);
  const defaults = model && state.config.variants[model.variant];
  if (!defaults) return;
  for (const knob of ["exaggeration", "cfg_weight", "temperature"]) {
    $(knob).value = String(defaults[knob]);
  }
}

function fillFormats() {
  const select = $("response_format");
  select.replaceChildren(...state.config.formats.map((format) => {
    const option = document.createElement("option");
    option.value = format;
    option.textContent = format;
    return option;
  }));
  select.value = state.config.default_format;
}

/** The speech request the controls describe; empty number fields are left to the worker. */
function speechBody() {
  const body = {
    model: $("model").value, input: $("text").value, voice: $("voice").value,
    response_format: $("response_format").value,
  };
  for (const knob of KNOBS) {
    const raw = $(knob).value.trim();
    if (raw !== "") body[knob] = INTEGER_KNOBS.has(knob) ? parseInt(raw, 10) : Number(raw);
  }
  return body;
}

// -- speaking ---------------------------------------------------------------------------

function audioContext() {
  if (!state.audioContext) {
    try {
      state.audioContext = new AudioContext();
    } catch {
      state.audioContext = null; // no Web Audio: the clip is still received, drawn and downloadable
    }
  }
  if (state.audioContext && state.audioContext.state === "suspended") {
    state.audioContext.resume().catch(() => {}); // may stay suspended without an audio device
  }
  return state.audioContext;
}

function stamp(id, ms) {
  const output = $(id);
  output.dataset.ms = ms === null ? "" : String(Math.round(ms));
  output.textContent = ms === null ? "–" : `${Math.round(ms)} ms`;
}

function resetTiming() {
  for (const id of ["first-audio", "first-scheduled", "last-audio"]) stamp(id, null);
  $("clip-length").textContent = "–";
  $("clip-seed").textContent = "–";
}

/** Times (ms since the request left, on this browser's clock) as windows arrive and are scheduled. */
function timingRecorder(started, player) {
  const windows = [];
  return {
    windows,
    onSamples(samples) {
      const arrived = performance.now() - started;
      if (windows.length === 0) stamp("first-audio", arrived);
      const scheduled = player.schedule(samples);
      if (windows.length === 0 && scheduled !== null) stamp("first-scheduled", performance.now() - started);
      windows.push(samples);
      stamp("last-audio", arrived);
    },
  };
}

async function speakStreamed(body, signal, started, player) {
  const transport = $("transport").value;
  const response = await api.speech({ ...body, response_format: "pcm", stream_format: transport }, signal);
  const recorder = timingRecorder(started, player);
  const read = transport === "sse" ? readSseStream : readPcmStream;
  await read(response, recorder.onSamples);
  return { response, samples: joinSamples(recorder.windows), sampleRate: state.config.sample_rate, file: null };
}

async function speakWhole(body, signal, started, player) {
  const response = await api.speech({ ...body, stream: false }, signal);
  const bytes = await response.arrayBuffer();
  stamp("first-audio", performance.now() - started);
  stamp("last-audio", performance.now() - started);
  const file = new Blob([bytes], { type: response.headers.get("Content-Type") || "application/octet-stream" });
  let decoded = { samples: new PcmAssembler().push(new Uint8Array(bytes)), sampleRate: state.config.sample_rate };
  if (body.response_format !== "pcm") {
    // Without Web Audio there is nothing to decode with: the file still downloads as it came.
    decoded = player.context ? await decodeFile(player.context, bytes.slice(0))
      : { samples: new Float32Array(0), sampleRate: state.config.sample_rate };
  }
  player.sampleRate = decoded.sampleRate;
  if (player.schedule(decoded.samples) !== null) stamp("first-scheduled", performance.now() - started);
  return { response, ...decoded, file };
}

async function speak(event) {
  event.preventDefault();
  clearErrors(SPEECH_ERRORS);
  resetTiming();
  if (state.player) state.player.stop();
  const body = speechBody();
  const streamed = $("stream").checked;
  state.abort = new AbortController();
  state.player = new StreamPlayer(audioContext(), state.config.sample_rate);
  busy(true);
  const started = performance.now();
  try {
    const request = streamed ? speakStreamed : speakWhole;
    const clip = await request(body, state.abort.signal, started, state.player);
    finishClip(body, clip, streamed);
  } catch (error) {
    showError(error, SPEECH_ERRORS);
    setStatus(error.name === "AbortError" ? "Stopped." : "The request failed.");
  } finally {
    busy(false);
  }
}

function busy(on) {
  $("speak").disabled = on;
  $("stop").disabled = !on;
  if (on) setStatus("Speaking…");
}

function finishClip(body, clip, streamed) {
  const seed = clip.response.headers.get("X-Chatterbox-Seed");
  state.lastSeed = seed;
  $("clip-seed").textContent = seed ?? "–";
  $("reuse-seed").disabled = seed === null;
  $("clip-length").textContent = `${(clip.samples.length / clip.sampleRate).toFixed(2)} s`;
  addClip({ body, seed, streamed, ...clip });
  setStatus("Done.");
}

// -- clips ------------------------------------------------------------------------------

function downloadBlob(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 0);
}

/** The clip in its chosen format: the exact bytes when the page has them, else spoken again. */
async function clipFile(clip) {
  const format = clip.body.response_format;
  if (clip.file) return clip.file;
  if (LOCAL_FORMATS.has(format)) {
    return format === "wav" ? wavBlob(clip.samples, clip.sampleRate) : pcmBlob(clip.samples);
  }
  // Compressed formats are encoded by the worker: the same request, seeded, in one call.
  const response = await api.speech({ ...clip.body, seed: Number(clip.seed), stream: false });
  return response.blob();
}

function clipItem(clip, number) {
  const item = document.createElement("li");
  const title = document.createElement("p");
  const voice = state.voices.find((v) => v.id === clip.body.voice);
  title.textContent = `Clip ${number}: ${voice ? voice.name : clip.body.voice}, ${clip.body.model}, seed ${clip.seed}, `
    + `${(clip.samples.length / clip.sampleRate).toFixed(2)} s`;
  const canvas = document.createElement("canvas");
  canvas.width = 800;
  canvas.height = 96;
  canvas.className = "wave";
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `Waveform of clip ${number}`);
  item.append(title, canvas, clipButtons(clip, number));
  return { item, canvas };
}

function clipButtons(clip, number) {
  const row = document.createElement("div");
  row.className = "row";
  const play = document.createElement("button");
  play.type = "button";
  play.textContent = "Play";
  play.addEventListener("click", () => {
    const player = new StreamPlayer(audioContext(), clip.sampleRate);
    player.schedule(clip.samples);
  });
  const download = document.createElement("button");
  download.type = "button";
  download.className = "download";
  const format = clip.body.response_format;
  download.textContent = `Download ${format}`;
  download.addEventListener("click", async () => {
    clearErrors(SPEECH_ERRORS);
    try {
      downloadBlob(await clipFile(clip), `chatterbox-clip-${number}.${EXTENSIONS[format] || format}`);
    } catch (error) {
      showError(error, SPEECH_ERRORS);
    }
  });
  row.append(play, download);
  if (clip.streamed && !LOCAL_FORMATS.has(format)) {
    const note = document.createElement("span");
    note.className = "hint";
    note.textContent = `${format} is encoded by the worker: the download is spoken again with seed ${clip.seed}.`;
    row.append(note);
  }
  return row;
}

function addClip(clip) {
  state.clips += 1;
  const { item, canvas } = clipItem(clip, state.clips);
  $("clips").prepend(item);
  drawWaveform(canvas, clip.samples);
}

// -- voices: upload, record, delete ----------------------------------------------------

async function upload(event) {
  event.preventDefault();
  clearErrors(UPLOAD_ERRORS);
  const form = new FormData();
  form.append("name", $("upload-name").value);
  for (const field of ["description", "gender"]) {
    const value = $(`upload-${field}`).value.trim();
    if (value) form.append(field, value);
  }
  const file = $("upload-file").files[0];
  if (file) form.append("file", file, file.name);
  else if (state.recordedBlob) form.append("file", state.recordedBlob, "recording.wav");
  $("upload").disabled = true;
  try {
    const saved = await api.uploadVoice(form);
    $("upload-form").reset();
    state.recordedBlob = null;
    $("record-status").textContent = "";
    $("voice-search").value = "";
    await loadVoices(saved.id);
    setStatus(`Saved voice ${saved.name} (${saved.id}).`);
  } catch (error) {
    showError(error, UPLOAD_ERRORS);
  } finally {
    $("upload").disabled = false;
  }
}

async function deleteSelected() {
  const voice = selectedVoice();
  if (!voice) return;
  const button = $("delete-voice");
  if (state.deleteArmedFor !== voice.id) {
    state.deleteArmedFor = voice.id; // a second press confirms, without a modal dialog
    button.textContent = `Press again to delete ${voice.name}`;
    return;
  }
  clearErrors(DELETE_ERRORS);
  try {
    await api.deleteVoice(voice.id);
    await loadVoices();
    setStatus(`Deleted voice ${voice.name}.`);
  } catch (error) {
    showError(error, DELETE_ERRORS);
  }
}

function recordingSupported() {
  return Boolean(window.MediaRecorder && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

async function startRecording() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
  recorder.addEventListener("stop", async () => {
    stream.getTracks().forEach((track) => track.stop());
    await keepRecording(new Blob(chunks, { type: recorder.mimeType }));
  });
  recorder.start();
  state.recording = recorder;
  $("record").textContent = "Stop recording";
  $("record-status").textContent = `Recording… speak for at least ${state.config.voice_seconds.minimum} s.`;
}

/** The browser records webm or ogg; the upload checks want WAV, FLAC or OGG, so send WAV. */
async function keepRecording(blob) {
  try {
    const decoded = await decodeFile(audioContext(), await blob.arrayBuffer());
    state.recordedBlob = wavBlob(decoded.samples, decoded.sampleRate);
    $("record-status").textContent = `Recorded ${(decoded.samples.length / decoded.sampleRate).toFixed(1)} s; `
      + "Save voice uploads it as WAV.";
  } catch (error) {
    $("err-file").textContent = `The recording could not be decoded: ${error.message}`;
  }
}

async function toggleRecording() {
  clearErrors(UPLOAD_ERRORS);
  if (state.recording) {
    state.recording.stop();
    state.recording = null;
    $("record").textContent = "Record from the microphone";
    return;
  }
  try {
    await startRecording();
  } catch (error) {
    $("err-file").textContent = `The microphone is not available: ${error.message}`;
  }
}

// -- start ------------------------------------------------------------------------------

function wire() {
  $("speak-form").addEventListener("submit", speak);
  $("stop").addEventListener("click", () => {
    if (state.abort) state.abort.abort();
    if (state.player) state.player.stop();
  });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("speak-form").requestSubmit();
  });
  $("voice-search").addEventListener("input", () => renderVoices());
  $("voice").addEventListener("change", describeVoice);
  $("model").addEventListener("change", applyVariantDefaults);
  $("delete-voice").addEventListener("click", deleteSelected);
  $("reuse-seed").addEventListener("click", () => { $("seed").value = state.lastSeed ?? ""; });
  $("upload-form").addEventListener("submit", upload);
  $("stream").addEventListener("change", () => { $("transport").disabled = !$("stream").checked; });
  const record = $("record");
  record.addEventListener("click", toggleRecording);
  if (!recordingSupported()) {
    record.disabled = true;
    $("record-status").textContent = "This browser allows the microphone only on https or localhost.";
  }
}

async function start() {
  wire();
  try {
    state.config = await api.getConfig();
  } catch (error) {
    setStatus("The page's settings could not be read.");
    showError(error, {});
    return;
  }
  applyBounds();
  fillFormats();
  if (state.config.api_key_required && !api.hasApiKey()) {
    setStatus("This worker needs its API key.");
    await askForKey();
    return; // the key form loads the lists
  }
  await loadLists();
}

start();

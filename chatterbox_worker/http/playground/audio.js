// Audio in the page: streamed PCM to samples, Web Audio scheduling, WAV/PCM files, waveforms.
//
// The worker's PCM is 16-bit little-endian mono. Network chunks split anywhere, so an odd
// trailing byte is kept for the next chunk.

import { ApiError } from "./api.js";

const PCM_SCALE = 32768;
// Scheduled this far ahead of the audio clock, so the first window never starts late.
const SCHEDULE_LEAD_S = 0.05;
const WAV_HEADER_BYTES = 44;

/** Raw PCM bytes, in chunks of any length, to float samples. */
export class PcmAssembler {
  constructor() {
    this.carry = null;
  }

  push(bytes) {
    let data = bytes;
    if (this.carry !== null) {
      data = new Uint8Array(bytes.length + 1);
      data[0] = this.carry;
      data.set(bytes, 1);
      this.carry = null;
    }
    const whole = data.length - (data.length % 2);
    if (whole < data.length) {
      this.carry = data[data.length - 1];
    }
    const view = new DataView(data.buffer, data.byteOffset, whole);
    const samples = new Float32Array(whole / 2);
    for (let i = 0; i < samples.length; i++) {
      samples[i] = view.getInt16(2 * i, true) / PCM_SCALE;
    }
    return samples;
  }
}

/**
 * Plays windows back to back on an AudioContext as they arrive. Where the context is
 * suspended (no audio device, no gesture yet) the windows are still scheduled, and play
 * once it resumes: what the page reports comes from arrival and scheduling, not the speakers.
 */
export class StreamPlayer {
  constructor(context, sampleRate) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.nextTime = 0;
    this.sources = [];
  }

  /** Schedule one window; returns the audio-clock time it starts at (null without a context). */
  schedule(samples) {
    if (!this.context || samples.length === 0) {
      return null;
    }
    const buffer = this.context.createBuffer(1, samples.length, this.sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const startAt = Math.max(this.context.currentTime + SCHEDULE_LEAD_S, this.nextTime);
    source.start(startAt);
    this.nextTime = startAt + buffer.duration;
    this.sources.push(source);
    return startAt;
  }

  stop() {
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // already ended
      }
    }
    this.sources = [];
  }
}

/** Read a raw-audio (stream_format "audio", pcm) body, calling onSamples per network chunk. */
export async function readPcmStream(response, onSamples) {
  const reader = response.body.getReader();
  const assembler = new PcmAssembler();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      return;
    }
    const samples = assembler.push(value);
    if (samples.length > 0) {
      onSamples(samples);
    }
  }
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes;
}

function sseEvents(buffer) {
  // Events end with a blank line; the rest waits for the next chunk.
  const parts = buffer.split("\n\n");
  return { complete: parts.slice(0, -1), rest: parts[parts.length - 1] };
}

function handleSseEvent(raw, assembler, onSamples) {
  const data = raw.split("\n").filter((line) => line.startsWith("data: ")).map((line) => line.slice(6)).join("\n");
  if (!data) {
    return null;
  }
  const event = JSON.parse(data);
  if (event.type === "speech.audio.delta") {
    const samples = assembler.push(base64Bytes(event.audio));
    if (samples.length > 0) {
      onSamples(samples);
    }
  } else if (event.type === "error") {
    const error = event.error || {};
    throw new ApiError(200, error.message || "the stream failed", error.param, error.code);
  }
  return event;
}

/** Read a server-sent-events body (stream_format "sse", pcm); resolves with the done event. */
export async function readSseStream(response, onSamples) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const assembler = new PcmAssembler();
  let buffer = "";
  let doneEvent = null;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      return doneEvent;
    }
    const { complete, rest } = sseEvents(buffer + value.replaceAll("\r\n", "\n"));
    buffer = rest;
    for (const raw of complete) {
      const event = handleSseEvent(raw, assembler, onSamples);
      if (event && event.type === "speech.audio.done") {
        doneEvent = event;
      }
    }
  }
}

/** Concatenate windows into one clip. */
export function joinSamples(windows) {
  const total = windows.reduce((n, w) => n + w.length, 0);
  const clip = new Float32Array(total);
  let offset = 0;
  for (const w of windows) {
    clip.set(w, offset);
    offset += w.length;
  }
  return clip;
}

function int16Bytes(samples, view, offset) {
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(offset + 2 * i, Math.round(s * (PCM_SCALE - 1)), true);
  }
}

/** Samples as a 16-bit mono WAV file. */
export function wavBlob(samples, sampleRate) {
  const buffer = new ArrayBuffer(WAV_HEADER_BYTES + 2 * samples.length);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, 2 * sampleRate, true); // bytes per second
  view.setUint16(32, 2, true); // block align
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  int16Bytes(samples, view, WAV_HEADER_BYTES);
  return new Blob([buffer], { type: "audio/wav" });
}

/** Samples as raw 16-bit little-endian PCM, the worker's "pcm" format. */
export function pcmBlob(samples) {
  const buffer = new ArrayBuffer(2 * samples.length);
  int16Bytes(samples, new DataView(buffer), 0);
  return new Blob([buffer], { type: "audio/pcm" });
}

/** A whole encoded file (any format the browser decodes) as mono samples at its own rate. */
export async function decodeFile(context, arrayBuffer) {
  const buffer = await context.decodeAudioData(arrayBuffer);
  const mono = new Float32Array(buffer.length);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < mono.length; i++) {
      mono[i] += channel[i] / buffer.numberOfChannels;
    }
  }
  return { samples: mono, sampleRate: buffer.sampleRate };
}

/** The clip's envelope on a canvas: the min and max of each pixel column, so silences show. */
export function drawWaveform(canvas, samples) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const style = getComputedStyle(canvas);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = style.getPropertyValue("--wave-bg").trim() || "#f3f4f6";
  ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = style.getPropertyValue("--wave-fg").trim() || "#1d4ed8";
  const perColumn = samples.length / width;
  const middle = height / 2;
  for (let x = 0; x < width; x++) {
    let lo = 0;
    let hi = 0;
    const end = Math.min(samples.length, Math.ceil((x + 1) * perColumn));
    for (let i = Math.floor(x * perColumn); i < end; i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    const top = middle - hi * middle;
    ctx.fillRect(x, top, 1, Math.max(1, (hi - lo) * middle));
  }
}

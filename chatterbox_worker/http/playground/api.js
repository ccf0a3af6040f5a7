// The worker's public API, as the page calls it: bearer token, JSON in, OpenAI errors out.
//
// The token lives in memory and in sessionStorage only (gone when the tab closes); it is
// never written to localStorage or a cookie.

const KEY_STORAGE = "chatterbox.apiKey";
let apiKey = readStoredKey();

function readStoredKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return ""; // storage refused (private mode): keep the key in memory only
  }
}

export function setApiKey(key) {
  apiKey = key;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    // memory only
  }
}

export function hasApiKey() {
  return apiKey !== "";
}

/** An API refusal: the OpenAI error body's message and the request field it names. */
export class ApiError extends Error {
  constructor(status, message, param, code) {
    super(message);
    this.status = status;
    this.param = param || null;
    this.code = code || null;
  }
}

function headers(extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

/** The ApiError a failed response stands for, worded as the API words it. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to the status line
  }
  const error = body && body.error;
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.message, error.param, error.code);
  }
  return new ApiError(response.status, `${response.status} ${response.statusText}`.trim(), null, null);
}

async function call(method, path, { json, form, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (json !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser writes the multipart boundary
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    throw await errorFrom(response);
  }
  return response;
}

export async function getConfig() {
  return (await call("GET", "/playground/config.json")).json();
}

export async function listVoices() {
  return (await call("GET", "/v1/audio/voices")).json();
}

export async function listModels() {
  return (await call("GET", "/v1/models")).json();
}

export async function uploadVoice(form) {
  return (await call("POST", "/v1/audio/voices", { form })).json();
}

export async function deleteVoice(voiceId) {
  return (await call("DELETE", `/v1/audio/voices/${encodeURIComponent(voiceId)}`)).json();
}

/** POST /v1/audio/speech; resolves once the status is in (the body may still be streaming). */
export function speech(body, signal) {
  return call("POST", "/v1/audio/speech", { json: body, signal });
}

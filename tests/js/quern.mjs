// What every test file shares: the live stack that tests/system/test_replicate_js_client.py started
// (QUERN_JS_CONTEXT, JSON) and a client made as the README shows it.
import assert from "node:assert/strict";
import { createRequire } from "node:module";

import Replicate from "replicate";

const require = createRequire(import.meta.url);
// The class the client throws; the package's main module does not export it.
export const ApiError = require("replicate/lib/error");

export const context = JSON.parse(process.env.QUERN_JS_CONTEXT ?? "null");
if (!context) {
  throw new Error("run through tests/system/test_replicate_js_client.py: QUERN_JS_CONTEXT is not set");
}

export const EMBEDDINGS = "quern/all-minilm-l6-v2";
export const LLM = "quern/smollm2-135m-instruct";
export const IMAGES = "quern/tiny-stable-diffusion";
export const PROMPT = { prompt: "Name a colour.", max_new_tokens: 12, seed: 7 };
export const TERMINAL = ["succeeded", "failed", "canceled", "aborted"];

/** A client as the README shows it: the API root + `/v1` as `baseUrl`, a Quern token. */
export function client(token = context.token) {
  return new Replicate({ auth: token, baseUrl: `${context.baseUrl}/v1` });
}

/** `{id, model}`: the one version of a new model (`quern/...`) copying the embeddings model
 * with a 4 s batch window, so its first prediction stays queued (`starting`) for 4 s. The
 * wrapper makes a few per file; each use takes a fresh one. */
export function slowVersion() {
  const version = context.slowVersions.shift();
  assert.ok(version, "the wrapper made too few slow versions");
  return version;
}

/** The ApiError `call` rejects with, checked to carry this status. */
export async function rejectsWithStatus(status, call) {
  let caught;
  try {
    await call();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof ApiError, `expected an ApiError, got ${caught}`);
  assert.equal(caught.name, "ApiError");
  assert.equal(caught.response.status, status, caught.message);
  return caught;
}

/** Each key is there (as the client's index.d.ts declares it), whatever its value. */
export function assertHasFields(object, fields, what) {
  const missing = fields.filter((field) => !(field in object));
  assert.deepEqual(missing, [], `${what} lacks ${missing.join(", ")}: ${JSON.stringify(object)}`);
}

export const PREDICTION_FIELDS = [
  "id", "status", "model", "version", "input", "output", "source", "error", "logs",
  "data_removed", "metrics", "created_at", "started_at", "completed_at", "urls",
];

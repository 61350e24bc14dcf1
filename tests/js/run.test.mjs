// replicate.run: by owner/name and by owner/name:version, with `Prefer: wait` (the default
// `wait: {mode: "block"}`), a block that runs out and then polls, and `wait: {mode: "poll"}`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EMBEDDINGS, LLM, PROMPT, client, slowVersion } from "./quern.mjs";

const replicate = client();

test("run returns an embedding", async () => {
  const output = await replicate.run(EMBEDDINGS, { input: { text: "hello" } });
  assert.ok(Array.isArray(output));
  assert.equal(output.length, 384);
  assert.ok(output.every((x) => typeof x === "number"));
});

test("run returns generated text as one string", async () => {
  const output = await replicate.run(LLM, { input: PROMPT });
  assert.equal(typeof output, "string");
  assert.ok(output.length > 0);
});

test("run with a version gives the same text (same seed)", async () => {
  const model = await replicate.models.get(...LLM.split("/"));
  const version = model.latest_version.id;
  const byVersion = await replicate.run(`${LLM}:${version}`, { input: PROMPT });
  assert.equal(byVersion, await replicate.run(LLM, { input: PROMPT }));
});

test("run blocks with Prefer: wait and answers finished, without polling", async () => {
  const seen = [];
  const output = await replicate.run(
    EMBEDDINGS,
    { input: { text: "block" }, wait: { mode: "block", timeout: 30 } },
    (prediction) => seen.push(prediction.status),
  );
  assert.equal(output.length, 384);
  // The progress callback sees the created prediction and the result: no poll in between.
  assert.deepEqual(seen, ["succeeded", "succeeded"]);
});

test("run whose block wait runs out polls until it is finished", async () => {
  // A 4 s batch window keeps it queued past the 1 s wait: the answer must not read finished.
  const version = slowVersion();
  const seen = [];
  const started = performance.now();
  const output = await replicate.run(
    `${version.model}:${version.id}`,
    { input: { text: "later" }, wait: { mode: "block", timeout: 1 } },
    (prediction) => seen.push(prediction.status),
  );
  assert.equal(output.length, 384);
  assert.ok(performance.now() - started > 1000);
  assert.equal(seen[0], "starting");
  assert.equal(seen.at(-1), "succeeded");
});

test("run in poll mode creates without Prefer: wait and polls", async () => {
  const seen = [];
  const output = await replicate.run(
    EMBEDDINGS,
    { input: { text: "poll" }, wait: { mode: "poll", interval: 100 } },
    (prediction) => seen.push(prediction.status),
  );
  assert.equal(output.length, 384);
  assert.equal(seen[0], "starting"); // answered at once, before the worker ran it
  assert.equal(seen.at(-1), "succeeded");
});

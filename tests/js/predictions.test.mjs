// predictions.create/get/list/cancel, replicate.wait and replicate.paginate.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  EMBEDDINGS,
  PREDICTION_FIELDS,
  assertHasFields,
  client,
  context,
  slowVersion,
} from "./quern.mjs";

const replicate = client();

test("create, get and wait for a prediction", async () => {
  const created = await replicate.predictions.create({
    model: EMBEDDINGS,
    input: { text: `poll me ${crypto.randomUUID()}` }, // new: not answered from the cache
  });
  assertHasFields(created, PREDICTION_FIELDS, "a created prediction");
  assert.equal(created.status, "starting");
  assert.equal(created.model, EMBEDDINGS);
  assert.deepEqual(Object.keys(created.urls).sort(), ["cancel", "get", "stream"]);
  assert.equal(created.urls.get, `${context.baseUrl}/v1/predictions/${created.id}`);

  const done = await replicate.wait(created, { interval: 100 });
  assert.equal(done.status, "succeeded");
  assert.equal(done.output.length, 384);
  assert.ok(done.completed_at && done.metrics.predict_time >= 0);
  assert.deepEqual((await replicate.predictions.get(created.id)).output, done.output);
});

test("create by version with wait: N sends Prefer: wait=N", async () => {
  const model = await replicate.models.get(...EMBEDDINGS.split("/"));
  const version = model.latest_version.id;
  const done = await replicate.predictions.create({ version, input: { text: "x" }, wait: 30 });
  assert.equal(done.status, "succeeded");
  assert.equal(done.version, version);

  // A 4 s batch window keeps it queued past the 1 s wait: answered `starting` after ~1 s.
  const slow = slowVersion();
  const started = performance.now();
  const queued = await replicate.predictions.create({
    version: slow.id,
    input: { text: "x" },
    wait: 1,
  });
  assert.ok(performance.now() - started >= 900);
  assert.equal(queued.status, "starting");
  assert.equal(queued.model, slow.model);
  assert.equal((await replicate.wait(queued, { interval: 200 })).status, "succeeded");
});

test("cancel a queued prediction", async () => {
  const queued = await replicate.predictions.create({
    version: slowVersion().id,
    input: { text: "no" },
  });
  const canceled = await replicate.predictions.cancel(queued.id);
  assert.equal(canceled.status, "canceled");
  assert.equal((await replicate.predictions.get(queued.id)).status, "canceled");
  // wait() returns a finished prediction at once.
  assert.equal((await replicate.wait(canceled)).status, "canceled");
});

test("run with an AbortSignal stops polling and cancels the prediction", async () => {
  const version = slowVersion(); // queued for 4 s: still `starting` when the signal fires
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 500);
  const seen = [];
  const output = await replicate.run(
    `${version.model}:${version.id}`,
    { input: { text: "stop" }, wait: { mode: "poll", interval: 100 }, signal: controller.signal },
    (prediction) => seen.push(prediction),
  );
  assert.equal(output, null);
  const last = seen.at(-1);
  assert.equal(last.status, "canceled");
  assert.equal((await replicate.predictions.get(last.id)).status, "canceled");
});

test("list pages through every prediction", async () => {
  const mine = client(context.otherToken); // a new user: only these predictions
  const made = [];
  for (let i = 0; i < 5; i += 1) {
    made.push(await mine.predictions.create({ model: EMBEDDINGS, input: { text: `${i}` } }));
  }
  const newestFirst = made.map((p) => p.id).reverse();

  const page = await mine.predictions.list();
  assert.deepEqual(page.results.map((p) => p.id), newestFirst);
  assert.equal(page.next, null);
  assertHasFields(page.results[0], PREDICTION_FIELDS, "a listed prediction");

  // predictions.list takes no page size: ask for pages of 2, then follow `next` with paginate.
  const firstPage = async () =>
    (await mine.request("/predictions", { params: { page_size: 2 } })).json();
  const pages = [];
  for await (const results of mine.paginate(firstPage)) {
    pages.push(results.map((p) => p.id));
  }
  const pairs = [newestFirst.slice(0, 2), newestFirst.slice(2, 4), newestFirst.slice(4)];
  assert.deepEqual(pages, pairs);

  const all = [];
  for await (const results of mine.paginate(mine.predictions.list)) {
    all.push(...results.map((p) => p.id));
  }
  assert.deepEqual(all, newestFirst);
});

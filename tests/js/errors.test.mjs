// Quern's problem details reach the client as ApiError, with the response's status.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EMBEDDINGS, client, context, rejectsWithStatus } from "./quern.mjs";

const replicate = client();

test("401: a token Quern does not know", async () => {
  const stranger = client("qrn_not-a-token");
  await rejectsWithStatus(401, () => stranger.accounts.current());
  await rejectsWithStatus(401, () => stranger.run(EMBEDDINGS, { input: { text: "x" } }));
});

test("403: models.create for another owner", async () => {
  const admin = client(context.adminToken);
  await rejectsWithStatus(403, () =>
    admin.models.create("someone-else", `js-${Date.now().toString(36)}`, {
      visibility: "public",
      hardware: "cpu",
    }),
  );
});

test("404: an unknown model or prediction", async () => {
  await rejectsWithStatus(404, () => replicate.models.get("quern", "no-such-model"));
  await rejectsWithStatus(404, () => replicate.run("quern/no-such-model", { input: {} }));
  await rejectsWithStatus(404, () => replicate.predictions.get("no-such-prediction"));
});

test("422: an input the model's schema refuses, as problem+json", async () => {
  const error = await rejectsWithStatus(422, () =>
    replicate.run(EMBEDDINGS, { input: { text: "" } }),
  );
  assert.match(error.message, /input\.text/);
  assert.match(error.response.headers.get("content-type"), /^application\/problem\+json/);
});

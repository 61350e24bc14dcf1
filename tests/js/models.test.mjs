// models.get/list/create, models.versions.list/get and accounts.current.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EMBEDDINGS, LLM, assertHasFields, client, context } from "./quern.mjs";

const replicate = client();

const MODEL_FIELDS = [
  "url", "owner", "name", "description", "visibility", "github_url", "paper_url",
  "license_url", "run_count", "cover_image_url", "default_example", "is_official",
  "latest_version",
];
const VERSION_FIELDS = ["id", "created_at", "cog_version", "openapi_schema"];

test("models.get", async () => {
  const model = await replicate.models.get("quern", "smollm2-135m-instruct");
  assertHasFields(model, MODEL_FIELDS, "a model");
  assert.deepEqual([model.owner, model.name, model.visibility], [
    "quern",
    "smollm2-135m-instruct",
    "public",
  ]);
  assert.ok(model.url.endsWith(`/v1/models/${LLM}`), model.url);
  assert.ok(model.run_count >= 0);
  assert.equal(model.is_official, true);
  assertHasFields(model.latest_version, VERSION_FIELDS, "a model's latest_version");
});

test("models.list, through every page", async () => {
  const ids = new Set();
  for await (const results of replicate.paginate(replicate.models.list)) {
    for (const model of results) {
      assertHasFields(model, MODEL_FIELDS, "a listed model");
      ids.add(`${model.owner}/${model.name}`);
    }
  }
  assert.ok(ids.has(EMBEDDINGS) && ids.has(LLM), [...ids].join(" "));
});

test("models.versions.list and get", async () => {
  const model = await replicate.models.get(...LLM.split("/"));
  const page = await replicate.models.versions.list(...LLM.split("/"));
  assert.equal(page.results[0].id, model.latest_version.id);
  assertHasFields(page.results[0], VERSION_FIELDS, "a listed version");

  const version = await replicate.models.versions.get(...LLM.split("/"), model.latest_version.id);
  assertHasFields(version, VERSION_FIELDS, "a version");
  const schemas = version.openapi_schema.components.schemas;
  assert.deepEqual(schemas.Output, { title: "Output", type: "string" });
  // A prompt or a chat's messages: exactly one of them.
  assert.deepEqual(schemas.Input.oneOf, [{ required: ["prompt"] }, { required: ["messages"] }]);
  assert.ok(version.cog_version);

  const embeddings = await replicate.models.get(...EMBEDDINGS.split("/"));
  const output = embeddings.latest_version.openapi_schema.components.schemas.Output;
  assert.equal(output.type, "array");
});

test("models.create as an admin", async () => {
  const admin = client(context.adminToken);
  const me = (await admin.accounts.current()).username;
  const name = `js-${Date.now().toString(36)}`;
  const created = await admin.models.create(me, name, {
    visibility: "public",
    hardware: "gpu-t4",
    description: "mine",
    github_url: "https://github.com/example/model",
  });
  assert.deepEqual([created.owner, created.name, created.description, created.run_count], [
    me,
    name,
    "mine",
    0,
  ]);
  assert.equal(created.latest_version, null);
  assert.equal(created.is_official, false);
  assert.equal((await admin.models.get(me, name)).github_url, "https://github.com/example/model");
});

test("accounts.current", async () => {
  const account = await replicate.accounts.current();
  assertHasFields(account, ["type", "username", "name"], "the account");
  assert.equal(account.type, "user");
  assert.equal(account.name, account.username);
  assert.ok(account.username);
});

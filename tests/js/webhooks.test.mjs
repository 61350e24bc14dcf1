// A webhook Quern sent (Standard Webhooks headers), checked with the client's validateWebhook
// and the secret from replicate.webhooks.default.secret.get().
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { validateWebhook } from "replicate";

import { EMBEDDINGS, client } from "./quern.mjs";

const replicate = client();
const received = [];
let arrived = () => {};
let server;
let receiverUrl;

before(async () => {
  // Loopback: the live stack lets webhooks go to 127.0.0.1 (QUERN_WEBHOOK_ALLOWED_NETWORKS).
  server = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      received.push({ headers: request.headers, body: Buffer.concat(chunks).toString("utf8") });
      response.end("ok");
      arrived();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  receiverUrl = `http://127.0.0.1:${server.address().port}/hook`;
});

after(() => server.close());

function nextWebhook(timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no webhook came")), timeoutMs);
    arrived = () => {
      clearTimeout(timer);
      resolve(received.at(-1));
    };
  });
}

test("validateWebhook accepts what Quern signed, and nothing else", async () => {
  const { key } = await replicate.webhooks.default.secret.get();
  assert.match(key, /^whsec_/);

  const coming = nextWebhook(60_000);
  const created = await replicate.predictions.create({
    model: EMBEDDINGS,
    input: { text: "Quern grinds grain." },
    webhook: receiverUrl,
    webhook_events_filter: ["completed"],
  });
  const webhook = await coming;
  const body = JSON.parse(webhook.body);
  assert.equal(body.id, created.id);
  assert.equal(body.status, "succeeded");
  assert.deepEqual(body, await replicate.predictions.get(created.id));

  // A request as a Node server sees it (headers in lower case), and as a fetch Request.
  assert.equal(await validateWebhook(webhook, key), true);
  const asFetch = new Request(receiverUrl, {
    method: "POST",
    headers: webhook.headers,
    body: webhook.body,
  });
  assert.equal(await validateWebhook(asFetch, key), true);
  assert.equal(
    await validateWebhook({
      id: webhook.headers["webhook-id"],
      timestamp: webhook.headers["webhook-timestamp"],
      signature: webhook.headers["webhook-signature"],
      body: webhook.body,
      secret: key,
    }),
    true,
  );

  const tampered = { ...webhook, body: webhook.body.replace("succeeded", "failed") };
  assert.equal(await validateWebhook(tampered, key), false);
  const otherKey = `whsec_${Buffer.from("x".repeat(32)).toString("base64")}`;
  assert.equal(await validateWebhook(webhook, otherKey), false);
});

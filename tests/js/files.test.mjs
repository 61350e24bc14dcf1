// File outputs: a text-to-image prediction's PNGs are URLs on Quern's API. The client makes
// FileOutput objects of `https:` URLs (fetched without an Authorization header) and leaves
// others as strings, which a caller fetches as they are.
import assert from "node:assert/strict";
import { test } from "node:test";

import { IMAGES, client } from "./quern.mjs";

const replicate = client();
const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

async function bytesOf(output) {
  if (typeof output === "string") {
    const response = await fetch(output); // as given: no token
    assert.equal(response.status, 200, `GET ${output}: ${response.status}`);
    assert.equal(response.headers.get("content-type"), "image/png");
    return new Uint8Array(await response.arrayBuffer());
  }
  const blob = await output.blob(); // a FileOutput
  assert.equal(blob.type, "image/png");
  return new Uint8Array(await blob.arrayBuffer());
}

test("the images of run can be read as the client hands them out", async () => {
  const input = { prompt: "a red barn", width: 96, num_outputs: 2, seed: 1 };
  const output = await replicate.run(IMAGES, { input });
  assert.ok(Array.isArray(output));
  assert.equal(output.length, 2);
  for (const file of output) {
    assert.match(`${file}`, /\/v1\/files\//);
    const bytes = await bytesOf(file);
    assert.deepEqual([...bytes.slice(0, 8)], PNG);
  }
});

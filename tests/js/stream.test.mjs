// replicate.stream: Server-Sent Events from the prediction's `urls.stream`. The client opens
// that URL with its own fetch and no Authorization header.
import assert from "node:assert/strict";
import { test } from "node:test";

import { LLM, PROMPT, client } from "./quern.mjs";

const replicate = client();

test("stream yields the tokens of the text, then done", async () => {
  const events = [];
  for await (const event of replicate.stream(LLM, { input: PROMPT })) {
    events.push(event);
  }
  assert.equal(events.at(-1).event, "done");
  const text = events.map((event) => `${event}`).join("");
  assert.ok(events.filter((event) => event.event === "output").length > 1);
  assert.equal(text, await replicate.run(LLM, { input: PROMPT })); // same seed, same text
});

// Quern's web console: one page, routes after `#`, the REST API called as any client calls it.
// The token lives in this module's memory only: a reload signs out, and nothing is stored
// where another script could read it. Everything shown is built with DOM nodes and text:
// no HTML string is ever parsed, so model output containing markup stays text.

const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const FILE_URL = /\/v1\/files\/[a-z2-7]{26}/;
const session = { token: null, account: null };

// ---- DOM -------------------------------------------------------------------------------

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const main = () => document.getElementById("main");

function show(...nodes) {
  main().replaceChildren(...nodes);
}

function statusBadge(status) {
  return el("span", { class: `status ${status}`, "data-status": status }, status);
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

function seconds(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(3)} s`;
}

// ---- API -------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A request to the API with the session's token; a problem answer becomes an ApiError whose
 * message is the API's own (it names the field at fault). */
async function api(path, { method = "GET", json, form, signal } = {}) {
  const headers = {};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  let body;
  if (form !== undefined) body = form;
  else if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body, signal });
  if (response.status === 401 && session.token) {
    signOut("Your session has ended: sign in again.");
    throw new ApiError(401, "Signed out");
  }
  if (!response.ok) throw new ApiError(response.status, await problemText(response));
  return response.status === 204 ? null : response.json();
}

async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/** An absolute URL from the API (a page link, a file) as a path on this origin. */
function local(url) {
  const parsed = new URL(url, location.origin);
  return parsed.pathname + parsed.search;
}

// ---- Sign in ---------------------------------------------------------------------------

function signOut(message) {
  session.token = null;
  session.account = null;
  document.getElementById("nav").hidden = true;
  location.hash = "#/signin";
  renderSignIn(message);
}

function renderSignIn(message) {
  const error = el("p", { class: "error", role: "alert" }, message || "");
  const username = el("input", { name: "username", autocomplete: "username", required: true });
  const password = el("input", {
    name: "password", type: "password", autocomplete: "current-password", required: true,
  });
  async function submit(event, register) {
    event.preventDefault();
    error.textContent = "";
    try {
      if (register) {
        await api("/v1/auth/register", {
          method: "POST", json: { username: username.value, password: password.value },
        });
      }
      const form = new URLSearchParams({ username: username.value, password: password.value });
      const token = await api("/v1/auth/token", { method: "POST", form });
      session.token = token.access_token;
      session.account = await api("/v1/account");
      document.getElementById("who").textContent =
        session.account.username + (session.account.role === "admin" ? " (admin)" : "");
      document.getElementById("nav").hidden = false;
      const next = location.hash.startsWith("#/signin") ? "#/models" : location.hash;
      if (location.hash === next) route();
      else location.hash = next;
    } catch (failure) {
      error.textContent = failure.message;
    }
  }
  const form = el("form", { class: "signin card", onsubmit: (event) => submit(event, false) },
    el("h1", {}, "Sign in"),
    el("label", {}, "Username", username),
    el("label", {}, "Password", password),
    el("div", { class: "actions" },
      el("button", { type: "submit" }, "Sign in"),
      el("button", { type: "button", class: "plain", onclick: (event) => submit(event, true) },
        "Create account")),
    error);
  show(form);
  username.focus();
}

// ---- Models ----------------------------------------------------------------------------

async function renderModels(query) {
  const page = await api(pageOf(query, "/v1/models"));
  const cards = page.results.map((model) => {
    const version = model.latest_version;
    return el("article", { class: "card" },
      el("h2", {}, el("a", { href: `#/models/${model.owner}/${model.name}` },
        `${model.owner}/${model.name}`)),
      el("p", {}, model.description || el("span", { class: "muted" }, "No description")),
      el("p", { class: "muted" },
        version ? version.model_type : "no version yet", ` · ${model.run_count} runs`));
  });
  show(el("h1", {}, "Models"), el("div", { class: "cards" }, cards), pager(page, "#/models"));
}

/** The API page a route's `page` names, as a path of this origin (a link cannot send the
 * token elsewhere), or the first page. */
function pageOf(query, first) {
  const page = query.get("page");
  return page ? local(page) : first;
}

/** Newer/older links from a page's `previous` and `next` URLs. */
function pager(page, route) {
  const link = (url, label) => url
    ? el("a", { href: `${route}?page=${encodeURIComponent(local(url))}` }, label)
    : null;
  return el("nav", { class: "pager" }, link(page.previous, "← Newer"), link(page.next, "Older →"));
}

async function renderModel(owner, name) {
  const ref = `${owner}/${name}`;
  const model = await api(`/v1/models/${ref}`);
  const versions = (await api(`/v1/models/${ref}/versions`)).results;
  const heading = [
    el("h1", {}, ref),
    el("p", {}, model.description || ""),
  ];
  if (!versions.length) {
    show(...heading, el("p", { class: "muted" }, "This model has no version yet."));
    return;
  }
  const choice = el("select", { name: "version" },
    versions.map((v, i) => el("option", { value: v.id },
      `${v.id.slice(0, 12)} · ${v.model_type} · ${when(v.created_at)}${i === 0 ? " (latest)" : ""}`)));
  const formBox = el("div");
  const result = el("section", { id: "result" });
  let current;
  function chooseVersion() {
    const version = versions.find((v) => v.id === choice.value);
    current = inputForm(version.input_schema, async (input) => {
      const prediction = await api("/v1/predictions", {
        method: "POST", json: { version: version.id, input },
      });
      result.replaceChildren(el("p", {},
        el("a", { href: `#/predictions/${prediction.id}` }, "Open this prediction's page")));
      result.append(predictionView(prediction));
    });
    formBox.replaceChildren(
      el("p", { class: "muted" },
        `Batches up to ${version.max_batch_size}, waits up to ${version.max_batch_wait_ms} ms; `
        + `runs time out after ${version.run_timeout_s} s.`),
      current);
  }
  choice.addEventListener("change", chooseVersion);
  chooseVersion();
  show(...heading,
    el("div", { class: "columns" },
      el("section", { class: "card" }, el("label", {}, "Version", choice), formBox),
      el("div", {}, el("h2", {}, "Output"), result)));
}

// ---- The input form, from a JSON Schema --------------------------------------------------

/** A form with one field per schema property; `run(input)` is called with the typed input.
 * The API validates again: its 422 is shown under the form. */
function inputForm(schema, run) {
  const properties = schema.properties || {};
  const required = new Set(schema.required || []);
  const fields = Object.entries(properties)
    .sort(([a, specA], [b, specB]) => rank(a, specA, required) - rank(b, specB, required))
    .map(([name, spec]) => field(name, spec, required.has(name)));
  const error = el("p", { class: "error", role: "alert" });
  const button = el("button", { type: "submit" }, "Run");
  const form = el("form", {
    class: "input-form",
    async onsubmit(event) {
      event.preventDefault();
      error.textContent = "";
      button.disabled = true;
      try {
        const input = {};
        for (const f of fields) {
          const value = await f.read();
          if (value !== undefined) input[f.name] = value;
        }
        await run(input);
      } catch (failure) {
        error.textContent = failure.message;
      } finally {
        button.disabled = false;
      }
    },
  }, fields.map((f) => f.node), el("div", { class: "actions" }, button), error);
  return form;
}

/** Where a field goes: by Cog's `x-order` if given, else required fields, then text and
 * files, then the rest (PostgreSQL keeps a schema's keys in its own order, not the author's). */
function rank(name, spec, required) {
  if (Number.isInteger(spec["x-order"])) return spec["x-order"];
  const text = [].concat(spec.type || []).includes("string") && !spec.enum;
  return 1000 + (required.has(name) ? 0 : text ? 1 : 2);
}

/** One input: its element, and `read()` → the typed value, or undefined to leave it out. */
function field(name, spec, isRequired) {
  const title = el("span", {}, name, isRequired ? " *" : "");
  const hint = el("div", { class: "hint" }, describe(spec));
  const label = (control) => el("label", { "data-field": name }, title, hint, control);
  const fail = (message) => { throw new Error(`${name}: ${message}`); };
  const types = [].concat(spec.type || []);

  if (Array.isArray(spec.enum)) {
    const select = el("select", { name },
      isRequired || "default" in spec ? null : el("option", { value: "" }, "—"),
      spec.enum.map((value, i) => el("option", { value: String(i), selected: value === spec.default },
        String(value))));
    return { name, node: label(select),
      read: () => (select.value === "" ? undefined : spec.enum[Number(select.value)]) };
  }
  if (types.includes("boolean")) {
    const box = el("input", { name, type: "checkbox", checked: spec.default === true });
    return { name, node: label(box), read: () => box.checked };
  }
  if (types.includes("integer") || types.includes("number")) {
    const integer = types.includes("integer") && !types.includes("number");
    const input = el("input", {
      name, type: "number", min: spec.minimum, max: spec.maximum,
      step: spec.multipleOf || (integer ? 1 : "any"), value: spec.default, required: isRequired,
    });
    return { name, node: label(input), read() {
      if (input.value === "") return undefined;
      const value = Number(input.value);
      if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
        fail(integer ? "a whole number" : "a number");
      }
      return value;
    } };
  }
  if (types.includes("string") && spec.format === "uri") {
    const file = el("input", { name: `${name}-file`, type: "file" });
    const url = el("input", { name, type: "url", placeholder: "or a URL" });
    return { name, node: label(el("div", {}, file, url)), async read() {
      if (file.files.length) {
        const upload = new FormData();
        upload.append("content", file.files[0]);
        return (await api("/v1/files", { method: "POST", form: upload })).urls.get;
      }
      if (url.value) return url.value;
      if (isRequired) fail("choose a file or give a URL");
      return undefined;
    } };
  }
  if (types.includes("string")) {
    const long = !spec.maxLength || spec.maxLength > 200;
    const input = long
      ? el("textarea", { name, required: isRequired, rows: 3 }, spec.default ?? "")
      : el("input", { name, value: spec.default ?? "", required: isRequired });
    return { name, node: label(input),
      read: () => (input.value === "" && !isRequired ? undefined : input.value) };
  }
  const lines = types.includes("array") && [].concat(spec.items?.type || []).includes("string");
  const area = el("textarea", {
    name, rows: 3, required: isRequired,
    placeholder: lines ? "one per line" : "JSON",
  }, spec.default === undefined ? "" : lines ? spec.default.join("\n") : JSON.stringify(spec.default));
  return { name, node: label(area), read() {
    const text = area.value.trim();
    if (text === "") return undefined;
    if (lines) return text.split("\n").map((line) => line.trim()).filter(Boolean);
    try {
      return JSON.parse(text);
    } catch {
      fail("not valid JSON");
    }
  } };
}

function describe(spec) {
  const parts = [];
  if (spec.description) parts.push(spec.description);
  const low = spec.minimum ?? (spec.exclusiveMinimum !== undefined ? `above ${spec.exclusiveMinimum}` : undefined);
  const high = spec.maximum ?? (spec.exclusiveMaximum !== undefined ? `below ${spec.exclusiveMaximum}` : undefined);
  if (low !== undefined || high !== undefined) parts.push(`${low ?? "…"} to ${high ?? "…"}`);
  if (spec.default !== undefined) parts.push(`default ${JSON.stringify(spec.default)}`);
  return parts.join(" · ");
}

// ---- A prediction ----------------------------------------------------------------------

/** A prediction's output, logs and metrics, kept current: its event stream while it runs
 * (tokens appended as they come), the stored prediction once it ends. */
function predictionView(prediction, { deliveries = false } = {}) {
  const status = el("span", {}, statusBadge(prediction.status));
  const cancel = el("button", {
    type: "button", class: "plain", id: "cancel",
    async onclick() {
      cancel.disabled = true;
      try {
        update(await api(`/v1/predictions/${prediction.id}/cancel`, { method: "POST" }));
      } catch (failure) {
        error.textContent = failure.message;
      }
    },
  }, "Cancel");
  const output = el("div", { class: "output", "data-output": "" });
  const logs = el("pre", { class: "logs" });
  const metrics = el("dl", { class: "metrics" });
  const error = el("p", { class: "error", role: "alert" });
  const hooks = el("div");
  const view = el("div", { class: "prediction", "data-id": prediction.id },
    el("p", {}, status, " ", el("code", {}, prediction.id), " ",
      el("span", { class: "muted" }, prediction.model), " ", cancel),
    error,
    output,
    el("h2", {}, "Metrics"), metrics,
    el("h2", {}, "Logs"), logs,
    el("h2", {}, "Input"), el("pre", { class: "input" }, JSON.stringify(prediction.input, null, 2)),
    deliveries ? [el("h2", {}, "Webhook deliveries ", el("button", {
      type: "button", class: "plain", onclick: () => renderDeliveries(prediction.id, hooks),
    }, "Refresh")), hooks] : null);

  function update(current) {
    prediction = current;
    status.replaceChildren(statusBadge(current.status));
    cancel.hidden = TERMINAL.has(current.status);
    renderOutput(current.output, output);
    logs.textContent = current.logs || "";
    error.textContent = current.error || "";
    renderMetrics(current, metrics);
    if (deliveries) renderDeliveries(current.id, hooks);
  }
  update(prediction);
  if (!TERMINAL.has(prediction.status)) follow(prediction, output, logs, update, status);
  return view;
}

/** Reads the prediction's Server-Sent Events with the token (EventSource cannot send one):
 * `output` chunks are appended as they come, `logs` too; at `done` the stored prediction
 * replaces them. If the stream breaks, the prediction is polled instead. */
async function follow(prediction, output, logs, update, status) {
  const live = el("pre", { class: "output-text", "data-live": "" });
  let text = "";
  const finish = async () => update(await api(`/v1/predictions/${prediction.id}`));
  try {
    const response = await fetch(`/v1/predictions/${prediction.id}/stream`, {
      headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" },
    });
    if (!response.ok) throw new ApiError(response.status, await problemText(response));
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if ((event.type === "output" || event.type === "logs") && status.textContent === "starting") {
          status.replaceChildren(statusBadge("processing"));  // events come from a running model
        }
        if (event.type === "output") {
          if (!output.contains(live)) output.replaceChildren(live);
          text += event.data;
          live.textContent = text;
        } else if (event.type === "logs") {
          logs.textContent += `${event.data}\n`;
        } else if (event.type === "done") {
          await reader.cancel();
          return finish();
        }
      }
    }
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) return;
  }
  // The stream ended early: poll until the prediction ends.
  for (;;) {
    const current = await api(`/v1/predictions/${prediction.id}`);
    if (TERMINAL.has(current.status)) return update(current);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function parseEvent(block) {
  const event = { type: "message", data: [] };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const key = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (key === "event") event.type = value;
    else if (key === "data") event.data.push(value);
  }
  event.data = event.data.join("\n");
  return event;
}

function renderMetrics(prediction, box) {
  const m = prediction.metrics || {};
  const rows = [
    ["Created", when(prediction.created_at)],
    ["Queue time", seconds(m.queue_time)],
    ["Predict time", seconds(m.predict_time)],
    ["Total time", seconds(m.total_time)],
    ["Batch size", m.batch_size ?? "—"],
    ["Attempts", m.attempts ?? "—"],
  ];
  if (m.input_token_count != null) rows.push(["Input tokens", m.input_token_count]);
  if (m.output_token_count != null) rows.push(["Output tokens", m.output_token_count]);
  if (m.cache_hit) rows.push(["Cache", "answered from the result cache"]);
  box.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

/** Output as text, images, a table of labels, an embedding's summary, or JSON: never HTML. */
function renderOutput(output, box) {
  if (output === null || output === undefined) {
    if (!box.querySelector("[data-live]")) box.replaceChildren(el("p", { class: "muted" }, "No output yet."));
    return;
  }
  const items = Array.isArray(output) ? output : [output];
  if (items.length && items.every((item) => typeof item === "string" && FILE_URL.test(item))) {
    box.replaceChildren(el("div", { class: "images" }, items.map(fileView)));
  } else if (typeof output === "string") {
    box.replaceChildren(el("pre", { class: "output-text" }, output));
  } else if (items.length && items.every((item) => typeof item === "number")) {
    const norm = Math.sqrt(items.reduce((sum, x) => sum + x * x, 0));
    box.replaceChildren(el("p", { class: "embedding" },
      `An embedding: ${items.length} numbers, L2 norm ${norm.toFixed(4)}. First eight: `,
      el("code", {}, items.slice(0, 8).map((x) => x.toFixed(4)).join(", ")), "…"));
  } else if (items.length && items.every((item) => item && typeof item === "object"
      && "label" in item && "score" in item)) {
    box.replaceChildren(el("table", { class: "labels" },
      el("tr", {}, el("th", {}, "Label"), el("th", {}, "Score")),
      items.map((item) => el("tr", {}, el("td", {}, String(item.label)),
        el("td", {}, Number(item.score).toFixed(4))))));
  } else {
    box.replaceChildren(el("pre", { class: "output-json" }, JSON.stringify(output, null, 2)));
  }
}

/** A file output, fetched with the token and shown from memory: an image inline, anything
 * else as a download link. */
function fileView(url) {
  const figure = el("figure", {}, el("span", { class: "muted" }, "Loading file…"));
  (async () => {
    try {
      const response = await fetch(local(url), {
        headers: session.token ? { Authorization: `Bearer ${session.token}` } : {},
      });
      if (!response.ok) throw new Error(await problemText(response));
      const blob = await response.blob();
      const href = URL.createObjectURL(blob);
      const name = url.split("?")[0].split("/").pop();
      figure.replaceChildren(
        blob.type.startsWith("image/") ? el("img", { src: href, alt: `output ${name}` }) : null,
        el("figcaption", {}, el("a", { href, download: name }, `Download (${blob.type}, ${blob.size} bytes)`)));
    } catch (failure) {
      figure.replaceChildren(el("span", { class: "error" }, `Could not load ${url}: ${failure.message}`));
    }
  })();
  return figure;
}

async function renderDeliveries(id, box) {
  try {
    const list = (await api(`/v1/predictions/${id}/webhooks`)).results;
    if (!list.length) {
      box.replaceChildren(el("p", { class: "muted" }, "No webhook deliveries."));
      return;
    }
    box.replaceChildren(el("table", { class: "deliveries" },
      el("tr", {}, ["Event", "Status", "URL", "Attempts"].map((h) => el("th", {}, h))),
      list.map((d) => el("tr", {},
        el("td", {}, d.event), el("td", {}, d.status), el("td", {}, d.url),
        el("td", {}, (d.attempts || []).map((a) => el("div", {},
          `#${a.number} ${when(a.started_at)}: `,
          a.status_code ? `HTTP ${a.status_code}` : a.error || "in flight",
          a.latency_ms != null ? ` (${Math.round(a.latency_ms)} ms)` : "")))))));
  } catch (failure) {
    box.replaceChildren(el("p", { class: "error" }, failure.message));
  }
}

// ---- Predictions -----------------------------------------------------------------------

async function renderPredictions(query) {
  const status = query.get("status") || "";
  const page = await api(pageOf(query,
    `/v1/predictions${status ? `?status=${encodeURIComponent(status)}` : ""}`));
  const filter = el("select", {
    name: "status",
    onchange: () => { location.hash = filter.value ? `#/predictions?status=${filter.value}` : "#/predictions"; },
  }, ["", "starting", "processing", "succeeded", "failed", "canceled"].map((s) =>
    el("option", { value: s, selected: s === status }, s || "any status")));
  const rows = page.results.map((p) => el("tr", {},
    el("td", {}, el("a", { href: `#/predictions/${p.id}` }, p.id)),
    el("td", {}, p.model),
    el("td", {}, statusBadge(p.status)),
    el("td", {}, when(p.created_at)),
    el("td", {}, seconds(p.metrics?.predict_time))));
  const admin = session.account?.role === "admin";
  show(
    el("h1", {}, admin ? "Predictions (everyone's: you are an admin)" : "Your predictions"),
    el("div", { class: "filters" }, el("span", {}, "Status"), filter),
    rows.length
      ? el("table", { class: "predictions" },
        el("tr", {}, ["ID", "Model", "Status", "Created", "Predict time"].map((h) => el("th", {}, h))),
        rows)
      : el("p", { class: "muted" }, "No predictions."),
    pager(page, "#/predictions"));
}

async function renderPrediction(id) {
  try {
    const prediction = await api(`/v1/predictions/${encodeURIComponent(id)}`);
    show(el("h1", {}, "Prediction"), predictionView(prediction, { deliveries: true }));
  } catch (failure) {
    if (failure.status === 404) {
      show(el("h1", {}, "Not found"),
        el("p", { class: "not-found" }, "There is no prediction with this id that you can see."));
    } else throw failure;
  }
}

// ---- Routes ----------------------------------------------------------------------------

async function route() {
  const [path, search] = location.hash.replace(/^#/, "").split("?");
  const query = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (!session.token) {
    renderSignIn();
    return;
  }
  try {
    if (parts[0] === "models" && parts.length === 3) await renderModel(parts[1], parts[2]);
    else if (parts[0] === "predictions" && parts.length === 2) await renderPrediction(parts[1]);
    else if (parts[0] === "predictions") await renderPredictions(query);
    else await renderModels(query);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) return;
    show(el("h1", {}, "Something went wrong"), el("p", { class: "error" }, failure.message));
  }
}

document.getElementById("signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();

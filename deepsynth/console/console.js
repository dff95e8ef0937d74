/**
 * The DeepSynth console: one ES module over the job API (`/api`) and the summarizer (`/v1`).
 *
 * Every action is one documented HTTP call, built as a request object (`{method, base, path, ...}`) that
 * `send` performs and `curlCommand` prints, so the page can show the curl doing the same thing. The API
 * token is kept in sessionStorage and sent only as a bearer header: never in a URL or a cookie, so a
 * page on another site cannot make the browser send it (no CSRF surface). Views are rendered from the
 * URL's hash (`#/jobs`, `#/jobs/<id>`, `#/new`, `#/datasets`, `#/playground`); a view's timers stop
 * when another view opens. A failed or slow call shows its error in place and never breaks the page.
 *
 * @module console
 */

const TOKEN_KEY = "deepsynth.apiToken";
const BASES = {
  api: document.querySelector('meta[name="deepsynth-api"]')?.content ?? "/api",
  summarizer: document.querySelector('meta[name="deepsynth-summarizer"]')?.content ?? "",
};
const STATUSES = ["queued", "running", "pausing", "paused", "succeeded", "failed", "stopped"];
const FINAL = new Set(["succeeded", "failed", "stopped"]);
const PURGEABLE = new Set(["succeeded", "failed", "stopped", "paused"]);
const PAUSABLE = new Set(["queued", "running", "pausing"]);
const JOB_TYPES = ["train", "tune", "evaluate", "prepare_dataset"];
const CHARTS = [
  ["loss", "Loss"], ["val_loss", "Validation loss"], ["lr", "Learning rate"],
  ["samples_per_s", "Samples per second"], ["data_wait_share", "Data-wait share"], ["peak_memory_mb", "Peak memory (MB)"],
];
/** The main training overrides of the New job form: [key, label, kind, choices]. */
const TRAIN_FIELDS = [
  ["dataset", "Dataset", "text"], ["mode", "Mode", "select", ["full", "lora", "qlora"]],
  ["lora_rank", "LoRA rank", "int"], ["lora_alpha", "LoRA alpha", "number"], ["lora_targets", "LoRA targets", "text"],
  ["lr", "Learning rate", "number"], ["max_steps", "Max steps", "int"], ["batch_size", "Batch size", "int"],
  ["num_workers", "Workers", "int"], ["strategy", "Strategy", "select", ["ddp", "deepspeed"]],
];

let cleanups = [];
let prefill = null;

// --- small DOM helpers ----------------------------------------------------------------------------

/**
 * Create an HTML element.
 * @param {string} tag element name
 * @param {Object<string, *>} [attrs] attributes; `on<event>` adds a listener, `value`/`checked` set properties
 * @param {...(Node|string|number|null|undefined|Array)} children text or nodes; null and false are skipped
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false || key === "value" || key === "checked") continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key === "className" ? "class" : key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  if (attrs.value != null) el.value = attrs.value;
  if (attrs.checked != null) el.checked = attrs.checked;
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

function stateMessage(text, kind = "loading") {
  return h("p", { class: `state ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

function table(caption, headers, rows, { empty = "Nothing yet.", rowClass = () => null } = {}) {
  if (!rows.length) return stateMessage(empty, "empty");
  return h("div", { class: "table-wrap" },
    h("table", { "aria-label": caption },
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((cells, i) => h("tr", { class: rowClass(i) }, cells.map((c) => h("td", {}, c)))))));
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}` }, status);
}

// --- formatting -----------------------------------------------------------------------------------

/**
 * A timestamp in the user's locale.
 * @param {number|string|null} value seconds since the epoch, or an ISO 8601 string
 * @returns {string}
 */
export function formatTime(value) {
  if (value == null || value === "") return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/**
 * How long ago a timestamp was, in the user's language ("5 minutes ago").
 * @param {number} seconds seconds since the epoch
 * @param {number} [now] the current time in milliseconds
 * @returns {string}
 */
export function formatAge(seconds, now = Date.now()) {
  const diff = seconds - now / 1000;
  const units = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  for (const [unit, size] of units) {
    if (Math.abs(diff) >= size || unit === "second") return format.format(Math.round(diff / size), unit);
  }
  return "";
}

/**
 * A number for people: up to 4 significant digits, exponents for very small or large values.
 * @param {*} value
 * @returns {string}
 */
export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return value == null ? "–" : String(value);
  if (Number.isInteger(value)) return value.toLocaleString();
  const size = Math.abs(value);
  return size !== 0 && (size < 1e-3 || size >= 1e6) ? value.toExponential(2) : value.toPrecision(4).replace(/\.?0+$/, "");
}

// --- the API --------------------------------------------------------------------------------------

/** @returns {string} the saved API token, or "" */
function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

/**
 * The absolute URL of a request object.
 * @param {{base?: string, path: string, query?: Object<string, *>}} req
 * @returns {string}
 */
export function requestUrl(req) {
  const url = new URL(BASES[req.base ?? "api"] + req.path, window.location.origin);
  for (const [key, value] of Object.entries(req.query ?? {})) {
    if (value != null) url.searchParams.set(key, String(value));
  }
  return url.toString();
}

function shellQuote(text) {
  return `'${String(text).replaceAll("'", `'"'"'`)}'`;
}

/**
 * The curl command doing what `send(req)` does; the token appears as $DEEPSYNTH_API_TOKEN, never its value.
 * @param {{method: string, base?: string, path: string, query?: Object, json?: *, form?: Array<[string, *]>,
 *          headers?: Object<string, string>}} req
 * @returns {string}
 */
export function curlCommand(req) {
  const parts = ["curl"];
  if (req.method !== "GET" && !(req.method === "POST" && (req.json !== undefined || req.form))) parts.push("-X", req.method);
  parts.push(shellQuote(requestUrl(req)));
  parts.push("-H", '"Authorization: Bearer $DEEPSYNTH_API_TOKEN"');
  for (const [key, value] of Object.entries(req.headers ?? {})) parts.push("-H", shellQuote(`${key}: ${value}`));
  if (req.json !== undefined) parts.push("-H", shellQuote("Content-Type: application/json"), "-d", shellQuote(JSON.stringify(req.json)));
  for (const [key, value] of req.form ?? []) {
    parts.push("-F", shellQuote(value instanceof File ? `${key}=@${value.name}` : `${key}=${value}`));
  }
  return parts.join(" ");
}

/**
 * The two APIs' error bodies as one shape: the job API's `{error: {type, message, field}}` and the
 * summarizer's `{error: code, detail}`.
 * @param {*} body the parsed response body
 * @param {number} status the HTTP status
 * @returns {{type: string, message: string, field: (string|null)}}
 */
export function normalizeError(body, status) {
  const err = body?.error;
  if (err && typeof err === "object") return { type: err.type ?? "error", message: err.message ?? "", field: err.field ?? null };
  if (typeof err === "string") return { type: err, message: body.detail ?? err, field: null };
  return { type: `http_${status}`, message: typeof body === "string" && body ? body.slice(0, 500) : `HTTP ${status}`, field: null };
}

/**
 * Perform a request object over fetch with the bearer token; never throws.
 * @param {{method: string, base?: string, path: string, query?: Object, json?: *, form?: Array<[string, *]>,
 *          headers?: Object<string, string>, timeoutMs?: number}} req
 * @returns {Promise<{ok: boolean, status: number, body: *, error: ({type: string, message: string, field: (string|null)}|null)}>}
 */
export async function send(req) {
  const headers = { ...(req.headers ?? {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let body;
  if (req.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(req.json);
  } else if (req.form) {
    body = new FormData();
    for (const [key, value] of req.form) body.append(key, value);
  }
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), req.timeoutMs ?? 20000);
  try {
    const response = await fetch(requestUrl(req), {
      method: req.method, headers, body, signal: controller.signal, credentials: "omit", cache: "no-store",
    });
    const text = await response.text();
    let parsed = text;
    try { parsed = text ? JSON.parse(text) : null; } catch { /* a plain-text answer (logs, a proxy's error) */ }
    if (response.ok) return { ok: true, status: response.status, body: parsed, error: null };
    const error = normalizeError(parsed, response.status);
    if (response.status === 401) showBanner(`The ${req.base === "summarizer" ? "summarizer" : "job API"} refused the token ` +
      "(401 unauthorized): paste the right API token (DEEPSYNTH_API_TOKEN) above and save it.");
    return { ok: false, status: response.status, body: parsed, error };
  } catch (err) {
    const message = err?.name === "AbortError"
      ? `The server did not answer within ${Math.round((req.timeoutMs ?? 20000) / 1000)} s; it may be busy. Try again.`
      : "Cannot reach the server: check that Ray Serve is running and this page's address is right.";
    return { ok: false, status: 0, body: null, error: { type: "unreachable", message, field: null } };
  } finally {
    clearTimeout(timer);
  }
}

function errorText(result) {
  const { error, status } = result;
  return status ? `${status} ${error.type}: ${error.message}` : error.message;
}

function showBanner(text) {
  const banner = document.getElementById("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

/**
 * A "copy as curl" control for one action: a disclosure showing the command and a button copying it.
 * @param {string} label what the action does ("Pause job")
 * @param {function(): Object} makeRequest builds the request object the action sends
 * @returns {HTMLElement}
 */
export function curlBox(label, makeRequest) {
  const code = h("pre", { "aria-label": `curl for ${label}` });
  const note = h("span", { class: "hint", role: "status" });
  const refresh = () => { code.textContent = curlCommand(makeRequest()); };
  const copy = h("button", {
    type: "button", class: "small", "aria-label": `Copy ${label} as curl`,
    onclick: async () => {
      refresh();
      details.open = true;
      try {
        await navigator.clipboard.writeText(code.textContent);
        note.textContent = "Copied.";
      } catch {
        note.textContent = "Select the command to copy it.";
      }
    },
  }, "Copy as curl");
  const details = h("details", { ontoggle: refresh }, h("summary", {}, `curl: ${label}`), code);
  return h("div", { class: "curl" }, h("div", { class: "row" }, copy, note), details);
}

// --- token ----------------------------------------------------------------------------------------

function setupToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const status = document.getElementById("token-status");
  const describe = () => {
    status.textContent = token() ? "API token set for this tab." : "No API token: paste the API token (DEEPSYNTH_API_TOKEN) and save it.";
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    const previous = token();
    sessionStorage.setItem(TOKEN_KEY, value);
    status.textContent = "Checking the token...";
    const result = await send({ method: "GET", path: "/jobs" });
    if (result.status === 401) {
      if (previous) sessionStorage.setItem(TOKEN_KEY, previous); else sessionStorage.removeItem(TOKEN_KEY);
      input.setAttribute("aria-invalid", "true");
      status.textContent = "Wrong token: the job API answered 401 unauthorized. Paste the value of DEEPSYNTH_API_TOKEN.";
      return;
    }
    input.value = "";
    input.removeAttribute("aria-invalid");
    showBanner("");
    status.textContent = result.ok ? "Token accepted; kept in this tab only (sessionStorage)."
      : `Token saved, but the job API could not confirm it: ${errorText(result)}`;
    render();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    describe();
    render();
  });
  describe();
}

// --- timers ---------------------------------------------------------------------------------------

/**
 * Run `fn` now and then every `ms` milliseconds until the view changes; a slow call delays the next
 * one instead of piling up, and a hidden tab skips its turns.
 * @param {number} ms
 * @param {function(): Promise<*>} fn
 */
export function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try { await fn(); } catch (err) { console.error(err); }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  cleanups.push(() => { stopped = true; clearTimeout(timer); });
}

// --- charts ---------------------------------------------------------------------------------------

/**
 * A small SVG line chart of one metric over steps.
 * @param {string} title the metric's name for people
 * @param {Array<{x: number, y: number}>} points in step order
 * @returns {HTMLElement} a figure whose accessible name gives the number of points and the last value
 */
export function lineChart(title, points) {
  const width = 320, height = 150, left = 48, right = 8, top = 10, bottom = 22;
  const last = points.at(-1);
  const label = points.length ? `${title}: ${points.length} points, last ${formatNumber(last.y)} at step ${last.x}` : `${title}: no data yet`;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, "data-points": points.length });
  chart.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }));
  if (points.length) {
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
    const py = (y) => height - bottom - ((y - y0) / (y1 - y0)) * (height - top - bottom);
    chart.append(svg("polyline", { class: "line", points: points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ") }));
    if (points.length < 40) for (const p of points) chart.append(svg("circle", { class: "dot", cx: px(p.x), cy: py(p.y), r: 2 }));
    chart.append(svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, formatNumber(y1)),
      svg("text", { x: left - 4, y: height - bottom, "text-anchor": "end" }, formatNumber(y0)),
      svg("text", { x: left, y: height - 6 }, `step ${formatNumber(x0)}`),
      svg("text", { x: width - right, y: height - 6, "text-anchor": "end" }, formatNumber(x1)));
  }
  return h("figure", { class: "chart" }, h("figcaption", {}, points.length ? `${title} · ${formatNumber(last.y)}` : `${title} · no data yet`), chart);
}

// --- views ----------------------------------------------------------------------------------------

function needToken(view) {
  if (token()) return false;
  view.append(stateMessage("Paste the API token above to see jobs, datasets and the playground.", "empty"));
  return true;
}

function jobRow(job) {
  const progress = job.progress;
  const loss = job.latest_metrics?.loss;
  return [
    h("a", { href: `#/jobs/${job.id}` }, job.id), job.type, job.preset, statusBadge(job.status),
    progress ? h("span", {}, h("progress", {
      max: progress.total ?? 1, value: progress.total ? progress.step : 0,
      "aria-label": `Progress of ${job.id}: step ${progress.step} of ${progress.total ?? "?"}`,
    }), ` ${progress.step}/${progress.total ?? "?"}`) : "–",
    loss == null ? "–" : formatNumber(loss),
    h("time", { datetime: new Date(job.created * 1000).toISOString(), title: formatTime(job.created) }, formatAge(job.created)),
  ];
}

function viewJobs(view) {
  view.append(h("h2", {}, "Jobs"));
  if (needToken(view)) return;
  const listRequest = () => ({ method: "GET", path: "/jobs" });
  const status = h("select", { id: "filter-status", "aria-label": "Filter by status" },
    h("option", { value: "" }, "All statuses"), STATUSES.map((s) => h("option", { value: s }, s)));
  const type = h("select", { id: "filter-type", "aria-label": "Filter by type" },
    h("option", { value: "" }, "All types"), JOB_TYPES.map((t) => h("option", { value: t }, t)));
  const auto = h("input", { type: "checkbox", id: "auto-refresh", checked: true });
  const updated = h("span", { class: "hint", role: "status" });
  const body = h("div", {}, stateMessage("Loading jobs..."));
  let jobs = null;
  const draw = () => {
    const shown = jobs.filter((j) => (!status.value || j.status === status.value) && (!type.value || j.type === type.value));
    body.replaceChildren(table("Jobs", ["Job", "Type", "Preset", "Status", "Progress", "Latest loss", "Age"], shown.map(jobRow), {
      empty: jobs.length ? "No job matches these filters." : "No jobs yet: create one under New job.",
    }));
  };
  const load = async () => {
    const result = await send(listRequest());
    if (!result.ok) {
      body.replaceChildren(stateMessage(`Could not list jobs: ${errorText(result)}`, "error"));
      return;
    }
    jobs = result.body;
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    draw();
  };
  status.addEventListener("change", () => jobs && draw());
  type.addEventListener("change", () => jobs && draw());
  view.append(h("div", { class: "row" }, status, type, h("label", {}, auto, " Auto-refresh"),
    h("button", { type: "button", onclick: load }, "Refresh"), updated), body, curlBox("List jobs", listRequest));
  every(3000, async () => { if (auto.checked || jobs === null) await load(); });
}

function confirmDialog(text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

function viewJob(view, jobId) {
  view.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), h("h2", {}, `Job ${jobId}`));
  if (needToken(view)) return;
  const jobRequest = () => ({ method: "GET", path: `/jobs/${jobId}` });
  const pauseRequest = () => ({ method: "POST", path: `/jobs/${jobId}/pause` });
  const resumeRequest = () => ({ method: "POST", path: `/jobs/${jobId}/resume` });
  const purge = h("input", { type: "checkbox", id: "purge" });
  const deleteRequest = () => ({ method: "DELETE", path: `/jobs/${jobId}`, query: purge.checked ? { purge: "true" } : {} });
  let metricsSince = -1;
  const metricsRequest = () => ({ method: "GET", path: `/jobs/${jobId}/metrics`, query: { since: metricsSince } });
  const logsRequest = () => ({ method: "GET", path: `/jobs/${jobId}/logs`, query: { tail: 200 } });
  const trialsRequest = () => ({ method: "GET", path: `/jobs/${jobId}/trials` });

  const summary = h("div", {}, stateMessage("Loading the job..."));
  const actionNote = h("p", { role: "status", class: "hint" });
  const pause = h("button", { type: "button", disabled: true }, "Pause");
  const resume = h("button", { type: "button", disabled: true }, "Resume");
  const remove = h("button", { type: "button", class: "danger", disabled: true }, "Delete");
  const clone = h("button", { type: "button", disabled: true }, "Clone as new job");
  const errorBox = h("div", {});
  const charts = h("div", { class: "charts", role: "group", "aria-label": "Training charts" });
  const checkpoints = h("div", {}, stateMessage("No checkpoints yet.", "empty"));
  const trials = h("div", {});
  const follow = h("input", { type: "checkbox", id: "follow-log", checked: true });
  const log = h("pre", { class: "log", tabindex: "0", "aria-label": "Log tail" }, "Loading the log...");
  let job = null;
  const records = [];

  const act = async (req, label) => {
    actionNote.textContent = `${label}...`;
    const result = await send(req);
    actionNote.textContent = result.ok ? `${label}: done.` : `${label} failed: ${errorText(result)}`;
    if (result.ok && result.body?.status) update(result.body);
    return result;
  };
  pause.addEventListener("click", () => act(pauseRequest(), "Pause"));
  resume.addEventListener("click", () => act(resumeRequest(), "Resume"));
  clone.addEventListener("click", () => {
    prefill = { type: job.type, preset: job.preset, overrides: job.overrides };
    window.location.hash = "#/new";
  });
  remove.addEventListener("click", async () => {
    const text = purge.checked
      ? `Delete ${jobId} and purge its files (run folder, checkpoints, logs)? This cannot be undone.`
      : `Delete the record of ${jobId}? Its run folder and checkpoints stay.`;
    if (!(await confirmDialog(text, purge.checked ? "Delete and purge" : "Delete job"))) return;
    const result = await act(deleteRequest(), "Delete");
    if (result.ok) {
      sessionStorage.setItem("deepsynth.notice", `Deleted ${jobId}${result.body.purged?.length ? `; purged ${result.body.purged.join(", ")}` : ""}.`);
      window.location.hash = "#/jobs";
    }
  });

  const update = (fresh) => {
    job = fresh;
    const progress = job.progress;
    summary.replaceChildren(h("dl", { class: "usage" },
      h("dt", {}, "Status"), h("dd", {}, statusBadge(job.status)),
      h("dt", {}, "Type · preset"), h("dd", {}, `${job.type} · ${job.preset}`),
      h("dt", {}, "Progress"), h("dd", {}, progress ? [h("progress", {
        max: progress.total ?? 1, value: progress.total ? progress.step : 0,
        "aria-label": `Progress: step ${progress.step} of ${progress.total ?? "?"}`,
      }), ` step ${progress.step} of ${progress.total ?? "?"}`] : "not started"),
      h("dt", {}, "Attempts"), h("dd", {}, job.attempts),
      h("dt", {}, "Resumes from"), h("dd", {}, job.resume_step == null ? "–" : `step ${job.resume_step}`),
      h("dt", {}, "Created"), h("dd", {}, formatTime(job.created)),
      h("dt", {}, "Updated"), h("dd", {}, formatTime(job.updated)),
      h("dt", {}, "Overrides"), h("dd", {}, h("code", {}, JSON.stringify(job.overrides)))));
    pause.disabled = !(job.type === "train" && PAUSABLE.has(job.status));
    resume.disabled = job.status !== "paused";
    remove.disabled = false;
    clone.disabled = false;
    purge.disabled = !PURGEABLE.has(job.status);
    if (purge.disabled) purge.checked = false;
    errorBox.replaceChildren(job.error ? h("div", { class: "error-box", role: "alert", "aria-label": "Job error" }, job.error) : "");
    checkpoints.replaceChildren(table("Checkpoints", ["Step", "Created", "Validation loss", "Path"],
      job.checkpoints.map((c) => [String(c.step), formatTime(c.created), formatNumber(c.metrics?.val_loss), h("span", { class: "path" }, c.path)]),
      { empty: "No checkpoints yet." }));
  };
  const drawCharts = () => {
    charts.replaceChildren(...CHARTS.map(([key, title]) => lineChart(title,
      records.filter((r) => typeof r[key] === "number" && Number.isFinite(r[key])).map((r) => ({ x: r.step, y: r[key] })))));
  };
  const loadJob = async () => {
    const result = await send(jobRequest());
    if (!result.ok) {
      if (!job) summary.replaceChildren(stateMessage(`Could not load the job: ${errorText(result)}`, "error"));
      else actionNote.textContent = `Refresh failed: ${errorText(result)}`;
      return;
    }
    update(result.body);
  };
  const loadMetrics = async () => {
    // Pages of at most the server's limit: follow `more` until this poll has everything.
    for (let page = 0; page < 20; page += 1) {
      const result = await send(metricsRequest());
      if (!result.ok) {
        if (!records.length) charts.replaceChildren(stateMessage(`No metrics: ${errorText(result)}`, "error"));
        return;
      }
      records.push(...result.body.records);
      metricsSince = result.body.next_since;
      if (!result.body.more) break;
    }
    drawCharts();
  };
  const loadLog = async () => {
    const result = await send(logsRequest());
    // Ray's progress bars colour their output; the terminal escapes would show as noise here.
    const text = result.ok ? String(result.body || "(no output yet)").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "") : null;
    log.textContent = result.ok ? text : `Could not read the log: ${errorText(result)}`;
    if (follow.checked) log.scrollTop = log.scrollHeight;
  };
  const loadTrials = async () => {
    const result = await send(trialsRequest());
    if (!result.ok) {
      trials.replaceChildren(stateMessage(`Could not list trials: ${errorText(result)}`, "error"));
      return;
    }
    const rows = result.body.trials;
    trials.replaceChildren(h("section", { class: "card", "aria-label": "Trials" }, h("h3", {}, "Trials"),
      table("Sweep trials", ["Trial", "Rank", "Alpha", "Learning rate", "Dropout", "Status", "Step", "Validation loss", "ROUGE-L", "Samples/s", "Peak memory (MB)"],
        rows.map((t) => [t.best ? `${t.run} (best)` : t.run, formatNumber(t.rank), formatNumber(t.alpha), formatNumber(t.lr),
          formatNumber(t.dropout), t.status, formatNumber(t.step), formatNumber(t.val_loss), formatNumber(t.rouge_l),
          formatNumber(t.samples_per_s), formatNumber(t.peak_memory_mb)]),
        { empty: "No trials have started yet.", rowClass: (i) => (rows[i].best ? "best" : null) }),
      curlBox("List trials", trialsRequest)));
  };

  view.append(
    h("section", { class: "card", "aria-label": "Job summary" }, summary, errorBox),
    h("section", { class: "card", "aria-label": "Job controls" },
      h("div", { class: "row" }, pause, resume, clone, h("label", {}, purge, " Purge its files too"), remove), actionNote,
      curlBox("Get job", jobRequest), curlBox("Pause job", pauseRequest), curlBox("Resume job", resumeRequest),
      curlBox("Delete job", deleteRequest)),
    h("section", { class: "card", "aria-label": "Metrics" }, h("h3", {}, "Metrics"), charts, curlBox("Read metrics", metricsRequest)),
    trials,
    h("section", { class: "card", "aria-label": "Checkpoints" }, h("h3", {}, "Checkpoints"), checkpoints),
    h("section", { class: "card", "aria-label": "Log" }, h("div", { class: "row" }, h("h3", {}, "Log"),
      h("label", {}, follow, " Follow")), log, curlBox("Read the log", logsRequest)));
  drawCharts();
  every(2000, async () => {
    if (job && FINAL.has(job.status) && records.length) return;
    await loadJob();
    await loadMetrics();
    if (job?.type === "tune") await loadTrials();
  });
  every(2500, async () => { if (follow.checked || log.textContent === "Loading the log...") await loadLog(); });
}

function field(id, label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("span", { class: "hint" }, hint) : null,
    h("p", { class: "field-error", id: `${id}-error`, role: "alert" }));
}

function parseValue(kind, raw) {
  const text = raw.trim();
  if (kind === "int" && /^-?\d+$/.test(text)) return Number(text);
  if (kind === "number" && text !== "" && Number.isFinite(Number(text))) return Number(text);
  return text; // the server names the field if this is not what it takes
}

function viewNew(view) {
  view.append(h("h2", {}, "New job"));
  if (needToken(view)) return;
  const start = prefill;
  prefill = null;
  const presetsRequest = () => ({ method: "GET", path: "/training/presets" });
  const benchmarksRequest = () => ({ method: "GET", path: "/datasets/benchmarks" });
  const generatedRequest = () => ({ method: "GET", path: "/datasets/generated" });
  const type = h("select", { id: "job-type" }, JOB_TYPES.map((t) => h("option", { value: t }, t)));
  const preset = h("select", { id: "job-preset" }, h("option", { value: "" }, "Loading presets..."));
  const description = h("p", { class: "hint" });
  const inputs = {};
  const mainFields = h("div", { class: "grid" }, TRAIN_FIELDS.map(([key, label, kind, choices]) => {
    const id = `field-${key}`;
    const control = kind === "select"
      ? h("select", { id }, h("option", { value: "" }, "preset's"), choices.map((c) => h("option", { value: c }, c)))
      : h("input", { id, type: "text", inputmode: kind === "text" ? null : "decimal", list: key === "dataset" ? "dataset-choices" : null });
    inputs[key] = { control, kind };
    return field(id, label, control);
  }));
  const datasets = h("datalist", { id: "dataset-choices" }, h("option", { value: "builtin" }));
  const advanced = h("textarea", { id: "advanced-json", spellcheck: "false" }, "{}");
  const formError = h("p", { class: "field-error", id: "form-error", role: "alert" });
  const result = h("div", { "aria-live": "polite" });
  const validate = h("button", { type: "button" }, "Validate");
  const create = h("button", { type: "button", class: "primary" }, "Create job");
  let presets = [], benchmarks = [];
  let idempotencyKey = crypto.randomUUID();

  const body = () => {
    let extra = {};
    const text = advanced.value.trim();
    if (text) extra = JSON.parse(text);
    if (typeof extra !== "object" || extra === null || Array.isArray(extra)) throw new SyntaxError("the advanced box must hold a JSON object");
    const overrides = { ...extra };
    if (type.value === "train") {
      for (const [key, { control, kind }] of Object.entries(inputs)) {
        if (control.value.trim() !== "") overrides[key] = parseValue(kind, control.value);
      }
    }
    return { type: type.value, preset: preset.value, overrides };
  };
  const safeBody = () => { try { return body(); } catch { return { type: type.value, preset: preset.value, overrides: {} }; } };
  const validateRequest = () => ({ method: "POST", path: "/jobs:validate", json: safeBody() });
  const createRequest = () => ({ method: "POST", path: "/jobs", json: safeBody(), headers: { "Idempotency-Key": idempotencyKey } });

  const clearErrors = () => {
    for (const el of view.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of view.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  };
  const showError = (res) => {
    const key = (res.error.field ?? "").replace(/^overrides\./, "").split(".")[0];
    const target = res.error.field === "type" ? type : res.error.field === "preset" ? preset
      : res.error.field?.startsWith("overrides") ? (type.value === "train" && inputs[key] ? inputs[key].control : advanced) : null;
    const message = `${res.error.message}`;
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.setAttribute("aria-describedby", `${target.id}-error`);
      view.querySelector(`#${target.id}-error`).textContent = message;
      target.focus();
    } else {
      formError.textContent = errorText(res);
    }
  };
  const submit = async (req, label) => {
    clearErrors();
    try { body(); } catch (err) {
      advanced.setAttribute("aria-invalid", "true");
      view.querySelector("#advanced-json-error").textContent = `Not valid JSON: ${err.message}`;
      return null;
    }
    result.replaceChildren(stateMessage(`${label}...`));
    const res = await send(req());
    if (!res.ok) {
      result.replaceChildren();
      showError(res);
    }
    return res;
  };
  validate.addEventListener("click", async () => {
    const res = await submit(validateRequest, "Validating");
    if (!res?.ok) return;
    result.replaceChildren(h("p", { role: "status" }, `Valid ${res.body.type} job on preset ${res.body.preset}.`),
      h("h3", {}, "Command the server would run"), h("pre", { class: "code", "aria-label": "Command" }, res.body.command),
      h("h3", {}, "Resolved configuration"), h("pre", { class: "code", "aria-label": "Resolved configuration" }, JSON.stringify(res.body.config, null, 2)));
  });
  create.addEventListener("click", async () => {
    const res = await submit(createRequest, "Creating");
    if (!res?.ok) return;
    idempotencyKey = crypto.randomUUID();
    window.location.hash = `#/jobs/${res.body.id}`;
  });
  // A changed request is a new one: a fresh key, so a retry of the same form replays and a new form creates.
  for (const el of [type, preset, advanced, ...Object.values(inputs).map((i) => i.control)]) {
    el.addEventListener("change", () => { idempotencyKey = crypto.randomUUID(); });
  }

  const fillPresets = () => {
    const choices = type.value === "train" || type.value === "tune"
      ? presets.filter((p) => p.type === type.value).map((p) => p.name) : benchmarks.map((b) => b.name);
    const keep = preset.value;
    preset.replaceChildren(...choices.map((name) => h("option", { value: name }, name)));
    if (choices.includes(keep)) preset.value = keep;
    describePreset();
  };
  const describePreset = () => {
    const chosen = presets.find((p) => p.name === preset.value && p.type === type.value);
    const bench = benchmarks.find((b) => b.name === preset.value);
    description.textContent = chosen ? chosen.description : bench ? `dataset ${bench.dataset}, split ${bench.split}` : "";
    mainFields.hidden = type.value !== "train";
    for (const [key, { control }] of Object.entries(inputs)) {
      const value = chosen?.config?.[key];
      control.setAttribute("placeholder", value == null ? "" : Array.isArray(value) ? value.join(",") : String(value));
    }
  };
  type.addEventListener("change", fillPresets);
  preset.addEventListener("change", describePreset);

  view.append(h("form", { class: "card", "aria-label": "New job", onsubmit: (e) => e.preventDefault() },
    h("div", { class: "grid" }, field("job-type", "Job type", type), field("job-preset", "Preset", preset)), description,
    h("h3", {}, "Main overrides"), h("p", { class: "hint" }, "Empty fields keep the preset's value (shown greyed). Other job types take their overrides in the JSON box."),
    mainFields, datasets,
    field("advanced-json", "Advanced overrides (JSON)", advanced, "Any other override, e.g. {\"eval_every\": 50}; the fields above win over the same keys here."),
    formError, h("div", { class: "row" }, validate, create), result,
    curlBox("Validate job", validateRequest), curlBox("Create job", createRequest),
    curlBox("List presets", presetsRequest), curlBox("List benchmarks", benchmarksRequest)));

  (async () => {
    const [p, b, g] = await Promise.all([send(presetsRequest()), send(benchmarksRequest()), send(generatedRequest())]);
    if (!p.ok || !b.ok) {
      formError.textContent = `Could not load presets: ${errorText(p.ok ? b : p)}`;
      return;
    }
    presets = p.body;
    benchmarks = b.body;
    for (const name of benchmarks.map((x) => x.name).concat(g.ok ? g.body.map((d) => `prepared:${d.name}`) : [])) {
      datasets.append(h("option", { value: name }));
    }
    if (start) {
      type.value = start.type;
      fillPresets();
      if (start.preset) preset.value = start.preset;
      const rest = { ...start.overrides };
      if (start.type === "train") {
        for (const [key, { control }] of Object.entries(inputs)) {
          if (key in rest) { control.value = Array.isArray(rest[key]) ? rest[key].join(",") : String(rest[key]); delete rest[key]; }
        }
      }
      advanced.value = JSON.stringify(rest, null, 2);
    } else {
      fillPresets();
    }
    describePreset();
  })();
}

function viewDatasets(view) {
  view.append(h("h2", {}, "Datasets"));
  if (needToken(view)) return;
  const generatedRequest = () => ({ method: "GET", path: "/datasets/generated" });
  const benchmarksRequest = () => ({ method: "GET", path: "/datasets/benchmarks" });
  const file = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.csv,.parquet" });
  const name = h("input", { type: "text", id: "upload-name", placeholder: "e.g. my-notes" });
  const textField = h("input", { type: "text", id: "upload-text-field", value: "text" });
  const summaryField = h("input", { type: "text", id: "upload-summary-field", value: "summary" });
  const validationRows = h("input", { type: "number", id: "upload-validation-rows", min: 1, placeholder: "a tenth" });
  const settings = h("textarea", { id: "upload-overrides", spellcheck: "false" }, "{}");
  const uploadRequest = () => {
    const form = [["file", file.files[0] ?? new File([], "data.jsonl")], ["name", name.value.trim()],
      ["text_field", textField.value.trim()], ["summary_field", summaryField.value.trim()]];
    if (validationRows.value !== "") form.push(["validation_rows", validationRows.value]);
    if (settings.value.trim() && settings.value.trim() !== "{}") form.push(["overrides", settings.value.trim()]);
    return { method: "POST", path: "/datasets", timeoutMs: 120000, form };
  };
  const uploadsRequest = () => ({ method: "GET", path: "/datasets/uploads" });
  const uploads = h("div", {}, stateMessage("Loading uploads..."));
  const uploadNote = h("div", { "aria-live": "polite" });
  const upload = h("button", { type: "submit", class: "primary" }, "Upload dataset");
  const generated = h("div", {}, stateMessage("Loading datasets..."));
  const benchmarks = h("div", {}, stateMessage("Loading benchmarks..."));
  const trainOn = (dataset) => {
    prefill = { type: "train", preset: null, overrides: { dataset } };
    window.location.hash = "#/new";
  };

  const form = h("form", { class: "card", "aria-label": "Upload a dataset" },
    h("h3", {}, "Upload a dataset"),
    h("p", { class: "hint" }, "A JSONL, CSV or Parquet file with a text and a summary column; the server prepares it with a prepare_dataset job."),
    h("div", { class: "grid" }, field("upload-file", "Dataset file", file), field("upload-name", "Dataset name", name),
      field("upload-text-field", "Text column", textField), field("upload-summary-field", "Summary column", summaryField),
      field("upload-validation-rows", "Validation rows", validationRows)),
    field("upload-overrides", "Prepare settings (JSON)", settings, "prepare_dataset settings, e.g. {\"max_pages\": 4, \"layout\": \"ocr2-a4\"}"),
    h("div", { class: "row" }, upload), uploadNote, curlBox("Upload dataset", uploadRequest));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    if (!file.files.length) { form.querySelector("#upload-file-error").textContent = "Choose a file first."; return; }
    upload.disabled = true;
    uploadNote.replaceChildren(stateMessage("Uploading..."));
    const res = await send(uploadRequest());
    upload.disabled = false;
    if (!res.ok) {
      const slot = { name: "upload-name", text_field: "upload-text-field", summary_field: "upload-summary-field", file: "upload-file",
        validation_rows: "upload-validation-rows", overrides: "upload-overrides" }[res.error.field?.split(".")[0]];
      if (slot) form.querySelector(`#${slot}-error`).textContent = res.error.message;
      uploadNote.replaceChildren(stateMessage(`Upload refused: ${errorText(res)}`, "error"));
      return;
    }
    const jobId = res.body.job.id;
    const split = Object.entries(res.body.rows ?? {}).map(([k, v]) => `${v} ${k}`).join(", ");
    uploadNote.replaceChildren(h("p", { role: "status" }, `Uploaded: ${res.body.dataset} (${split}), prepared by `, h("a", { href: `#/jobs/${jobId}` }, jobId), ". "),
      h("button", { type: "button", onclick: () => trainOn(res.body.dataset) }, `Train on ${res.body.dataset}`));
  });

  view.append(form,
    h("section", { class: "card", "aria-label": "Uploads" }, h("h3", {}, "Uploads"), uploads, curlBox("List uploads", uploadsRequest)),
    h("section", { class: "card", "aria-label": "Generated datasets" }, h("h3", {}, "Generated datasets"), generated, curlBox("List generated datasets", generatedRequest)),
    h("section", { class: "card", "aria-label": "Benchmark presets" }, h("h3", {}, "Benchmark presets"), benchmarks, curlBox("List benchmarks", benchmarksRequest)));

  every(3000, async () => {
    const res = await send(uploadsRequest());
    if (!res.ok) { uploads.replaceChildren(stateMessage(`Could not list uploads: ${errorText(res)}`, "error")); return; }
    uploads.replaceChildren(table("Uploads", ["Name", "Status", "File", "Columns", "Rows", "Prepare job", "Uploaded", ""],
      res.body.map((u) => [u.name, statusBadge(u.status), `${u.filename} (${u.format})`, `${u.text_field} → ${u.summary_field}`,
        Object.entries(u.rows).map(([k, v]) => `${k} ${v}`).join(", "), u.job_id ? h("a", { href: `#/jobs/${u.job_id}` }, u.job_id) : "–",
        formatTime(u.created), u.status === "ready" ? h("button", { type: "button", class: "small", "aria-label": `Train on ${u.dataset}`,
          onclick: () => trainOn(u.dataset) }, "Train on it") : ""]),
      { empty: "No uploads yet." }));
  });
  every(5000, async () => {
    const res = await send(generatedRequest());
    if (!res.ok) { generated.replaceChildren(stateMessage(`Could not list datasets: ${errorText(res)}`, "error")); return; }
    generated.replaceChildren(table("Generated datasets", ["Name", "Source", "Layout", "Splits", "Documents", "Pages", "Text tokens", "Visual tokens", "Ratio", "Created", ""],
      res.body.map((d) => [d.name, d.source, d.layout, Object.entries(d.splits).map(([s, n]) => `${s} ${n}`).join(", "),
        formatNumber(d.summary.documents), formatNumber(d.summary.pages), formatNumber(d.summary.text_tokens),
        formatNumber(d.summary.visual_tokens), formatNumber(d.summary.ratio), formatTime(d.created),
        h("button", { type: "button", class: "small", "aria-label": `Train on ${d.name}`, onclick: () => trainOn(`prepared:${d.name}`) }, "Train on it")]),
      { empty: "No prepared datasets yet: upload one, or create a prepare_dataset job." }));
  });
  (async () => {
    const res = await send(benchmarksRequest());
    if (!res.ok) { benchmarks.replaceChildren(stateMessage(`Could not list benchmarks: ${errorText(res)}`, "error")); return; }
    benchmarks.replaceChildren(table("Benchmark presets", ["Name", "Dataset", "Split", "Reference model", "Reference ROUGE", "Source"],
      res.body.map((b) => [b.name, b.dataset, b.split, b.reference_model ?? "–",
        b.reference_rouge ? Object.entries(b.reference_rouge).map(([k, v]) => `${k} ${formatNumber(v)}`).join(", ") : "–", b.source ?? "–"])));
  })();
}

/**
 * The page previews of a summarize response as image sources (data: URLs from the server).
 * @param {*} body the summarize response
 * @returns {Array<{src: string, width: (number|undefined), height: (number|undefined)}>}
 */
export function previewImages(body) {
  return (body?.previews ?? []).map((p) => {
    const data = typeof p === "string" ? p : p.data_url ?? p.image ?? p.png ?? p.data ?? "";
    const src = data.startsWith("data:") ? data : `data:${p.media_type ?? "image/png"};base64,${data}`;
    return { src, width: p.width, height: p.height };
  }).filter((p) => p.src.startsWith("data:image/"));
}

function summaryCard(title, res) {
  if (!res.ok) return h("section", { class: "card", "aria-label": title }, h("h3", {}, title), stateMessage(`Summarize failed: ${errorText(res)}`, "error"));
  const u = res.body.usage;
  const t = u.timings ?? {};
  const previews = previewImages(res.body);
  return h("section", { class: "card", "aria-label": title }, h("h3", {}, title),
    h("p", { class: "summary-text", "aria-label": `Summary (${title})` }, res.body.summary || "(empty summary)"),
    h("dl", { class: "usage", "aria-label": `Usage (${title})` },
      h("dt", {}, "Pages"), h("dd", {}, u.pages), h("dt", {}, "Visual tokens"), h("dd", {}, formatNumber(u.visual_tokens)),
      h("dt", {}, "Source text tokens"), h("dd", {}, formatNumber(u.source_text_tokens)),
      h("dt", {}, "Compression ratio"), h("dd", {}, formatNumber(u.compression_ratio)),
      h("dt", {}, "Summary tokens"), h("dd", {}, formatNumber(u.summary_tokens)), h("dt", {}, "Batch size"), h("dd", {}, u.batch_size),
      h("dt", {}, "Timings (s)"), h("dd", {}, `render ${formatNumber(t.render_s)}, queue ${formatNumber(t.queue_s)}, generate ${formatNumber(t.generate_s)}, total ${formatNumber(t.total_s)}`)),
    previews.length ? h("div", { class: "previews", role: "group", "aria-label": `Page previews (${title})` },
      previews.map((p, i) => h("figure", {}, h("img", { src: p.src, alt: `Page ${i + 1} as the model saw it`, width: p.width, height: p.height }),
        h("figcaption", {}, `page ${i + 1}`)))) : h("p", { class: "hint" }, "No page previews in this answer."));
}

function viewPlayground(view) {
  view.append(h("h2", {}, "Playground"));
  const modelsRequest = () => ({ method: "GET", base: "summarizer", path: "/v1/models" });
  const text = h("textarea", { id: "play-text", placeholder: "Paste a document, or choose a file below." });
  const files = h("input", { type: "file", id: "play-files", multiple: true, accept: ".pdf,.png,.jpg,.jpeg,application/pdf,image/png,image/jpeg" });
  const model = h("select", { id: "play-model" }, h("option", { value: "" }, "Base model"));
  const compare = h("select", { id: "play-compare" }, h("option", { value: "-" }, "No comparison"), h("option", { value: "" }, "Base model"));
  const maxNew = h("input", { id: "play-max-new", type: "number", min: 1, placeholder: "template's" });
  const minNew = h("input", { id: "play-min-new", type: "number", min: 0, placeholder: "template's" });
  const beams = h("input", { id: "play-beams", type: "number", min: 1, placeholder: "template's" });
  const previews = h("input", { type: "checkbox", id: "play-previews", checked: true });
  const modelInfo = h("p", { class: "hint" }, "Loading models...");
  const out = h("div", { class: "compare", "aria-live": "polite" });
  const go = h("button", { type: "submit", class: "primary" }, "Summarize");

  const request = (adapter) => {
    const options = { max_new_tokens: maxNew.value, min_new_tokens: minNew.value, num_beams: beams.value };
    const req = { method: "POST", base: "summarizer", path: "/v1/summarize", timeoutMs: 180000 };
    if (files.files.length) {
      req.form = [...files.files].map((f) => ["file", f]);
      for (const [key, value] of Object.entries(options)) if (value !== "") req.form.push([key, value]);
      if (adapter) req.form.push(["adapter", adapter]);
      if (previews.checked) req.form.push(["previews", "true"]);
    } else {
      req.json = { text: text.value };
      for (const [key, value] of Object.entries(options)) if (value !== "") req.json[key] = Number(value);
      if (adapter) req.json.adapter = adapter;
      if (previews.checked) req.json.previews = true;
    }
    return req;
  };
  const form = h("form", { class: "card", "aria-label": "Summarize" },
    field("play-text", "Document text", text), field("play-files", "PDF or page images", files, "A file replaces the text."),
    h("div", { class: "grid" }, field("play-model", "Model or adapter", model), field("play-compare", "Compare with", compare),
      field("play-max-new", "Max new tokens", maxNew), field("play-min-new", "Min new tokens", minNew), field("play-beams", "Beams", beams)),
    h("div", { class: "row" }, h("label", {}, previews, " Show page previews"), go), modelInfo,
    curlBox("Summarize", () => request(model.value)), curlBox("List models", modelsRequest));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!files.files.length && !text.value.trim()) { out.replaceChildren(stateMessage("Paste a text or choose a file first.", "error")); return; }
    go.disabled = true;
    const label = (value) => (value ? `Adapter ${value}` : "Base model");
    const runs = [model.value, ...(compare.value !== "-" ? [compare.value] : [])];
    out.replaceChildren(...runs.map((value) => h("section", { class: "card", "aria-label": label(value) }, stateMessage(`Summarizing with ${label(value)}...`))));
    const results = await Promise.all(runs.map((value) => send(request(value))));
    out.replaceChildren(...results.map((res, i) => summaryCard(label(runs[i]), res)));
    go.disabled = false;
  });
  view.append(form, out);
  (async () => {
    const res = await send(modelsRequest());
    if (!res.ok) { modelInfo.textContent = `Could not list models: ${errorText(res)}`; return; }
    modelInfo.textContent = `Serving ${res.body.model} (${res.body.family}, layout ${res.body.layout}).`;
    for (const a of res.body.adapters) {
      const text = `Adapter ${a.name} (step ${a.step}, ${a.mode})`;
      model.append(h("option", { value: a.name }, text));
      compare.append(h("option", { value: a.name }, text));
    }
  })();
}

// --- routing --------------------------------------------------------------------------------------

/**
 * Render the view the URL's hash names, stopping the previous view's timers first.
 */
export function render() {
  for (const stop of cleanups) stop();
  cleanups = [];
  const view = document.getElementById("view");
  view.replaceChildren();
  const [, name = "jobs", arg] = window.location.hash.split("/");
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === (name === "jobs" && arg ? "" : name)) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const notice = sessionStorage.getItem("deepsynth.notice");
  if (notice) {
    sessionStorage.removeItem("deepsynth.notice");
    view.append(h("p", { role: "status", class: "hint" }, notice));
  }
  if (name === "jobs" && arg) viewJob(view, decodeURIComponent(arg));
  else if (name === "new") viewNew(view);
  else if (name === "datasets") viewDatasets(view);
  else if (name === "playground") viewPlayground(view);
  else viewJobs(view);
  document.title = `DeepSynth console · ${name === "jobs" && arg ? arg : name}`;
}

setupToken();
window.addEventListener("hashchange", render);
render();

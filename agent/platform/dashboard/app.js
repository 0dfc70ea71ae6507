// The environments dashboard: plain JavaScript, no build step, no framework.
//
// What it reads and sends is only the documented API (docs/protocol.md): the listing, one row,
// `POST …/frames` for a mode change, and the live channel `GET /v1/environments/events`.
// Every piece of text from the platform goes into the page as text (textContent or an
// attribute value), never as HTML: names and paths come from machines we do not control.
(function () {
  "use strict";

  const KEY_STORAGE = "envagent.dashboard.key";
  const FILTER_STORAGE = "envagent.dashboard.filters";
  const PAGE_SIZE = 50;
  const MAX_PAGE = 100; // the listing's own limit
  const MODES = ["default", "standard", "acceptEdits", "bypassPermissions", "unrestricted"];
  const EVENTS_PATH = "/v1/environments/events";
  // Until the live channel says otherwise: the platform's default (docs/protocol.md).
  const DEFAULT_ONLINE_WINDOW_MS = 120000;
  // A stream that stays silent this long (no event, no keep-alive) is taken as dead.
  const STREAM_SILENCE_MS = 60000;
  // The Date header has a 1 s resolution: only a larger gap is taken as a skewed clock.
  const SKEW_THRESHOLD_MS = 2000;

  const $ = (id) => document.getElementById(id);

  const state = {
    key: null,
    generation: 0, // raised on sign-out: every loop and answer of an older one stops
    filters: { onlineOnly: false, source: "", userId: "" },
    rows: new Map(), // id -> row, as last received
    order: [], // ids of the rows the listing returned, in its order
    extras: [], // ids learnt from live events beyond the loaded pages, shown after them
    touched: new Map(), // id -> event sequence number of its last live update
    eventSeq: 0,
    cursor: null,
    hasNext: false,
    loaded: false, // a first page has arrived: until then, no empty state
    listGen: 0, // raised by each listing reset: older answers are dropped
    windowMs: DEFAULT_ONLINE_WINDOW_MS,
    clockOffset: 0, // the platform's clock minus ours, when they differ by more than 2 s
    liveAbort: null,
    timers: new Set(), // pending sleeps, cleared on sign-out
    refreshing: null,
    refreshAgain: false,
    refreshScheduled: false,
    detail: null, // { id, row, requestedMode, modeDirty }
    opener: null,
  };

  // --- the API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return { Authorization: "Bearer " + state.key };
  }

  function noteClock(response, sentAt) {
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isNaN(date)) return;
    const offset = date + 500 - (sentAt + Date.now()) / 2; // Date is truncated to the second
    state.clockOffset = Math.abs(offset) > SKEW_THRESHOLD_MS ? offset : 0;
  }

  async function api(path, options) {
    const opts = options || {};
    const headers = authHeaders();
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const sentAt = Date.now();
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || "GET",
        headers,
        body,
        cache: "no-store",
        credentials: "omit",
        signal: opts.signal,
      });
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "Cannot reach the platform (" + error.message + ").");
    }
    noteClock(response, sentAt);
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message =
        data && typeof data.message === "string" ? data.message : "HTTP " + response.status;
      const code = data && typeof data.error === "string" ? data.error : "http";
      throw new ApiError(response.status, code, message);
    }
    return data;
  }

  function listingPath(limit, after) {
    const query = new URLSearchParams();
    query.set("limit", String(limit));
    if (after) query.set("after", after);
    if (state.filters.onlineOnly) query.set("onlineOnly", "true");
    if (state.filters.source) query.set("source", state.filters.source);
    if (state.filters.userId) query.set("userId", state.filters.userId);
    return "/v1/environments?" + query.toString();
  }

  // A 401 after sign-in means the key was revoked or the platform forgot it: sign out.
  function failed(error, where) {
    if (error && error.name === "AbortError") return;
    if (error instanceof ApiError && error.status === 401) {
      signOut(error.message);
      return;
    }
    showError(where, error instanceof Error ? error.message : String(error));
  }

  // --- rows and their state -------------------------------------------------------------------

  function now() {
    return Date.now() + state.clockOffset;
  }

  function isOnline(row, at) {
    return (
      row.connectionId != null &&
      row.lastHeartbeat != null &&
      at - row.lastHeartbeat < state.windowMs
    );
  }

  // online: a socket and a fresh heartbeat; lost: a socket gone silent; left: no socket.
  function stateOf(row, at) {
    if (row.connectionId == null) return "left";
    return isOnline(row, at) ? "online" : "lost";
  }

  function metadataOf(row) {
    return row.metadata && typeof row.metadata === "object" ? row.metadata : {};
  }

  // Whether a row belongs under the filters, decided as the listing's own query decides it.
  function matches(row, at) {
    const f = state.filters;
    if (f.userId && row.userId !== f.userId) return false;
    if (f.onlineOnly && !isOnline(row, at)) return false;
    if (f.source && row.source !== f.source) return false;
    return true;
  }

  function filtersActive() {
    const f = state.filters;
    return f.onlineOnly || Boolean(f.source) || Boolean(f.userId);
  }

  // A copy that is not older than the one held: lastSeenAt moves with every write of the row.
  function isFresher(incoming, held) {
    return !held || !(held.lastSeenAt > incoming.lastSeenAt);
  }

  // `incoming`, keeping the held copy's lastHeartbeat when newer on the same socket: a
  // `heartbeats` event may have moved it past what a read of the row saw.
  function keepingHeartbeat(incoming, held) {
    const newer =
      held &&
      held.connectionId === incoming.connectionId &&
      held.lastHeartbeat > incoming.lastHeartbeat;
    return newer ? { ...incoming, lastHeartbeat: held.lastHeartbeat } : incoming;
  }

  function forget(id) {
    state.rows.delete(id);
    state.order = state.order.filter((other) => other !== id);
    state.extras = state.extras.filter((other) => other !== id);
  }

  function byFirstSeen(a, b) {
    const ra = state.rows.get(a);
    const rb = state.rows.get(b);
    return ra.firstSeenAt - rb.firstSeenAt || (a < b ? -1 : a > b ? 1 : 0);
  }

  function applyEvent(event) {
    if (!event || typeof event.id !== "string") return;
    state.eventSeq += 1;
    const held = state.rows.get(event.id);
    if (!isFresher(event, held)) return;
    const row = keepingHeartbeat(event, held);
    state.touched.set(row.id, state.eventSeq);
    updateDetail(row);
    if (!matches(row, now())) {
      if (held) forget(row.id);
      renderAll();
      return;
    }
    state.rows.set(row.id, row);
    if (!held && !state.order.includes(row.id) && !state.extras.includes(row.id)) {
      state.extras.push(row.id);
      state.extras.sort(byFirstSeen);
    }
    renderAll();
  }

  // One presence flush's heartbeats: each held row's lastHeartbeat, when newer. Only the
  // presence cells change; rows beyond the loaded pages are not held, and stay out.
  function applyHeartbeats(values) {
    if (!values || typeof values !== "object") return;
    const at = now();
    for (const [id, ms] of Object.entries(values)) {
      if (!Number.isFinite(ms)) continue;
      const row = state.rows.get(id);
      if (row && !(row.lastHeartbeat >= ms)) {
        row.lastHeartbeat = ms;
        const tr = rowElements.get(id);
        if (tr) fillPresence(tr, row, at);
      }
      const detail = state.detail && state.detail.id === id ? state.detail : null;
      if (detail && !(detail.row.lastHeartbeat >= ms)) detail.row.lastHeartbeat = ms;
      if (detail) fillDetailPresence(detail.row, at);
    }
  }

  // Read the pages of the listing from the start again, as many rows as are shown now.
  async function refresh() {
    if (state.refreshing) {
      state.refreshAgain = true;
      return state.refreshing;
    }
    const run = (async () => {
      do {
        state.refreshAgain = false;
        await refreshOnce();
      } while (state.refreshAgain);
    })();
    state.refreshing = run;
    try {
      await run;
    } finally {
      state.refreshing = null;
    }
  }

  async function refreshOnce() {
    if (!state.key) return; // signed out meanwhile
    const gen = state.generation;
    const listGen = state.listGen;
    const seqAtStart = state.eventSeq;
    const wanted = Math.max(PAGE_SIZE, state.order.length);
    const fetched = [];
    let cursor = null;
    let hasNext = false;
    try {
      do {
        const limit = Math.min(MAX_PAGE, Math.max(PAGE_SIZE, wanted - fetched.length));
        const page = await api(listingPath(limit, cursor));
        if (gen !== state.generation || listGen !== state.listGen) return;
        fetched.push(...page.connections);
        hasNext = page.hasNextPage;
        cursor = fetched.length ? fetched[fetched.length - 1].id : null;
      } while (hasNext && fetched.length < wanted);
    } catch (error) {
      if (gen === state.generation) failed(error, "list");
      return;
    }
    clearError("list");
    mergeListing(fetched, seqAtStart, { replace: true });
    state.cursor = cursor;
    state.hasNext = hasNext;
    renderAll();
    if (state.detail) refreshDetail();
  }

  // Rows of a listing read: fresher copies win; with `replace`, rows the read no longer
  // returns go, unless a live event touched them while the read was on its way.
  function mergeListing(fetched, seqAtStart, options) {
    const seen = new Set();
    for (const row of fetched) {
      seen.add(row.id);
      const held = state.rows.get(row.id);
      if (isFresher(row, held)) state.rows.set(row.id, keepingHeartbeat(row, held));
    }
    const ids = fetched.map((row) => row.id);
    const liveSince = (id) => (state.touched.get(id) || 0) > seqAtStart;
    if (options.replace) {
      const keep = [...state.order, ...state.extras].filter(
        (id) => !seen.has(id) && liveSince(id) && state.rows.has(id)
      );
      for (const id of [...state.order, ...state.extras]) {
        if (!seen.has(id) && !keep.includes(id)) state.rows.delete(id);
      }
      state.order = ids;
      state.extras = keep.sort(byFirstSeen);
    } else {
      state.order = [...state.order, ...ids.filter((id) => !state.order.includes(id))];
      state.extras = state.extras.filter((id) => !seen.has(id));
    }
    // What a fresher live copy says may no longer match the filters.
    const at = now();
    for (const id of [...state.order, ...state.extras]) {
      const row = state.rows.get(id);
      if (!row || !matches(row, at)) forget(id);
    }
  }

  // A new first page: sign-in, or the filters changed.
  async function resetListing() {
    const gen = state.generation;
    state.listGen += 1;
    const listGen = state.listGen;
    const seqAtStart = state.eventSeq;
    setLoading("Loading…");
    let page;
    try {
      page = await api(listingPath(PAGE_SIZE, null));
    } catch (error) {
      if (gen === state.generation && listGen === state.listGen) {
        setLoading("");
        throw error;
      }
      return false;
    }
    if (gen !== state.generation || listGen !== state.listGen) return false;
    setLoading("");
    clearError("list");
    state.rows.clear();
    state.order = [];
    state.extras = [];
    state.touched.clear();
    state.loaded = true;
    mergeListing(page.connections, state.eventSeq, { replace: true });
    state.cursor = page.connections.length
      ? page.connections[page.connections.length - 1].id
      : null;
    state.hasNext = page.hasNextPage;
    renderAll();
    // Events that came while the page was on its way were applied to the rows it replaced.
    if (state.eventSeq !== seqAtStart) scheduleRefresh();
    return true;
  }

  async function loadMore() {
    if (!state.hasNext || !state.cursor) return;
    const gen = state.generation;
    const listGen = state.listGen;
    const button = $("more");
    button.disabled = true;
    setLoading("Loading more…");
    try {
      const page = await api(listingPath(PAGE_SIZE, state.cursor));
      if (gen !== state.generation || listGen !== state.listGen) return;
      clearError("list");
      mergeListing(page.connections, state.eventSeq, { replace: false });
      if (page.connections.length) {
        state.cursor = page.connections[page.connections.length - 1].id;
      }
      state.hasNext = page.hasNextPage;
      renderAll();
    } catch (error) {
      if (gen === state.generation) failed(error, "list");
    } finally {
      button.disabled = false;
      setLoading("");
      // The button goes with the last page: keep the keyboard where the new rows are.
      if (button.hidden && document.activeElement === button) focusLastRow();
    }
  }

  // Several events in a row ask for one read.
  function scheduleRefresh() {
    const gen = state.generation;
    if (state.refreshScheduled) return;
    state.refreshScheduled = true;
    sleep(100, gen).then((current) => {
      state.refreshScheduled = false;
      if (current) refresh();
    });
  }

  // --- the live channel ---------------------------------------------------------------------

  function sleep(ms, gen) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        state.timers.delete(timer);
        resolve();
      }, ms);
      state.timers.add(timer);
    }).then(() => gen === state.generation);
  }

  function backoffMs(attempt) {
    return Math.min(1000 * 2 ** attempt, 30000) * (1 + 0.5 * Math.random());
  }

  // Follow the live channel until sign-out, reconnecting after a backoff. `started` is called
  // at the first `ready` or the first failure: the caller then reads the listing, which misses
  // nothing from there on. A later `ready` (a reconnect) reads the loaded pages again, once,
  // for what changed while no stream was open.
  async function runLive(gen, started) {
    let attempt = 0;
    let first = true;
    const begin = () => {
      if (!first) return false;
      first = false;
      started();
      return true;
    };
    const onReady = () => {
      attempt = 0;
      if (!begin()) refresh();
    };
    while (gen === state.generation) {
      const controller = new AbortController();
      state.liveAbort = controller;
      try {
        const sentAt = Date.now();
        const response = await fetch(EVENTS_PATH, {
          headers: { ...authHeaders(), Accept: "text/event-stream" },
          cache: "no-store",
          credentials: "omit",
          signal: controller.signal,
        });
        noteClock(response, sentAt);
        if (response.status === 401) {
          let message = "The platform refused the API key.";
          try {
            message = (await response.json()).message || message;
          } catch (_) {
            /* keep the default */
          }
          signOut(message);
          return;
        }
        // The platform always serves the channel: this is not a platform's URL.
        if (response.status === 404 || response.status === 405) {
          setLive("unavailable", "no live channel");
          showError(
            "live",
            "No live channel at " + location.origin + EVENTS_PATH + " (HTTP " +
              response.status + "): is this the platform's address? Changes will not show."
          );
          return;
        }
        if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
        await readStream(response.body, controller, onReady);
      } catch (error) {
        if (gen !== state.generation) return;
        if (!(error && error.name === "AbortError")) setLive("reconnecting", "reconnecting…");
      } finally {
        if (state.liveAbort === controller) state.liveAbort = null;
      }
      if (gen !== state.generation) return;
      begin(); // no `ready` yet: the listing is read meanwhile, and again at the `ready`
      setLive("reconnecting", "reconnecting…");
      const wait = backoffMs(attempt);
      attempt += 1;
      if (!(await sleep(wait, gen))) return;
    }
  }

  // Server-Sent Events over a fetch body: `event:`/`data:` lines, a blank line ends an event,
  // lines starting with a colon are comments (the keep-alives).
  async function readStream(body, controller, onReady) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let eventName = "";
    let data = [];
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    };
    const dispatch = () => {
      if (data.length) handleEvent(eventName || "message", data.join("\n"), onReady);
      eventName = "";
      data = [];
    };
    watch();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        watch();
        buffer += decoder.decode(value, { stream: true });
        for (;;) {
          const match = /\r\n|\r|\n/.exec(buffer);
          if (!match) break;
          // A CR at the end may be the first half of a CRLF still on its way.
          if (match[0] === "\r" && match.index === buffer.length - 1) break;
          const line = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          if (line === "") {
            dispatch();
          } else if (line[0] !== ":") {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text[0] === " ") text = text.slice(1);
            if (field === "event") eventName = text;
            else if (field === "data") data.push(text);
          }
        }
      }
    } finally {
      clearTimeout(silence);
      reader.cancel().catch(() => {});
    }
  }

  function handleEvent(name, text, onReady) {
    let data;
    try {
      data = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (name === "ready") {
      if (Number.isFinite(data.onlineWindowMs) && data.onlineWindowMs > 0) {
        state.windowMs = data.onlineWindowMs;
      }
      setLive("live", "live");
      onReady();
    } else if (name === "environment") {
      applyEvent(data);
    } else if (name === "heartbeats") {
      applyHeartbeats(data.lastHeartbeat);
    }
  }

  // --- session ------------------------------------------------------------------------------

  async function signIn(key) {
    const button = $("sign-in-button");
    button.disabled = true;
    clearError("sign-in");
    state.key = key;
    state.generation += 1;
    const gen = state.generation;
    try {
      await startSession();
      if (gen !== state.generation) return; // the channel refused the key: signed out
      await resetListing();
    } catch (error) {
      if (gen !== state.generation) return;
      signOut(error instanceof ApiError ? error.message : "Cannot reach the platform.");
      return;
    } finally {
      button.disabled = false;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    showSignedIn();
    const focusTarget = $("filter-online");
    if (focusTarget) focusTarget.focus();
  }

  // The live channel first: settled at its first `ready` (or failure), after which a read of
  // the listing misses nothing.
  function startSession() {
    const gen = state.generation;
    setLive("connecting", "connecting…");
    // Settled however the channel ends too (refused, not served, signed out).
    return new Promise((started) => runLive(gen, started).finally(started));
  }

  async function resume(key) {
    state.key = key;
    state.generation += 1;
    const gen = state.generation;
    showSignedIn();
    await startSession();
    if (gen !== state.generation) return;
    try {
      await resetListing();
    } catch (error) {
      failed(error, "list");
    }
  }

  function signOut(message) {
    state.generation += 1;
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    if (state.liveAbort) state.liveAbort.abort();
    state.liveAbort = null;
    for (const timer of state.timers) clearTimeout(timer);
    state.timers.clear();
    state.refreshScheduled = false;
    state.rows.clear();
    state.order = [];
    state.extras = [];
    state.touched.clear();
    state.cursor = null;
    state.hasNext = false;
    state.loaded = false;
    state.windowMs = DEFAULT_ONLINE_WINDOW_MS;
    closeDetail();
    rowElements.clear();
    $("rows").replaceChildren();
    $("org").textContent = "";
    $("session").hidden = true;
    $("environments").hidden = true;
    $("sign-in").hidden = false;
    clearError("list");
    clearError("live");
    if (message) showError("sign-in", message);
    else clearError("sign-in");
    $("api-key").value = "";
    $("api-key").focus();
  }

  function showSignedIn() {
    $("sign-in").hidden = true;
    $("session").hidden = false;
    $("environments").hidden = false;
  }

  function setLive(kind, text) {
    const live = $("live");
    if (live.dataset.state === kind && live.textContent === text) return;
    live.dataset.state = kind;
    live.textContent = text;
  }

  function showError(where, message) {
    const element = $(where + "-error");
    element.textContent = message;
    element.hidden = false;
  }

  function clearError(where) {
    const element = $(where + "-error");
    element.textContent = "";
    element.hidden = true;
  }

  function setLoading(text) {
    $("loading").textContent = text;
  }

  // --- rendering ----------------------------------------------------------------------------

  const COLUMNS = [
    "Name",
    "State",
    "Mode",
    "Branch",
    "Working directory",
    "Node",
    "Client",
    "Source",
    "User",
    "Pod",
    "Connected",
    "Last heartbeat",
    "Self-update",
  ];
  const rowElements = new Map(); // id -> <tr>

  function el(tag, className, text) {
    const element = document.createElement(tag);
    if (className) element.className = className;
    if (text !== undefined && text !== null) element.textContent = text;
    return element;
  }

  function ago(ms, at) {
    const seconds = Math.max(0, Math.round((at - ms) / 1000));
    if (seconds < 60) return seconds + " s ago";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min ago";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return hours + " h ago";
    return Math.floor(hours / 24) + " d ago";
  }

  function exact(ms) {
    const date = new Date(ms);
    return date.toLocaleString(undefined, {
      year: "numeric",
      month: "short",
      day: "numeric",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      timeZoneName: "short",
    });
  }

  // A <time> that says "12 s ago" and holds the exact time in its tooltip; the clock ticks it.
  function setTime(cell, ms, at) {
    cell.replaceChildren();
    if (ms == null || !Number.isFinite(ms)) {
      cell.append(el("span", "none", "—"));
      return;
    }
    const time = el("time", "ago", ago(ms, at));
    time.dateTime = new Date(ms).toISOString();
    time.title = exact(ms);
    time.dataset.ms = String(ms);
    cell.append(time);
  }

  function setText(cell, value, options) {
    cell.replaceChildren();
    if (value == null || value === "") {
      cell.append(el("span", "none", "—"));
      cell.removeAttribute("title");
      return;
    }
    const text = String(value);
    const span = el("span", options && options.className);
    // A path is cut at its start (style.css): its text sits in an inner left-to-right box.
    if (options && options.inner) span.append(el("span", null, text));
    else span.textContent = text;
    cell.append(span);
    if (options && options.title) cell.title = text;
  }

  function selfUpdateSummary(row) {
    const update = metadataOf(row).self_update;
    if (!update || typeof update !== "object") return { text: null, title: "" };
    if (update.supported && update.writable) {
      return { text: "yes", title: update.install_path || "" };
    }
    const text = update.supported ? "not writable" : "no";
    const title = [update.reason, update.manual_command && "by hand: " + update.manual_command]
      .filter(Boolean)
      .join(" — ");
    return { text, title };
  }

  function buildRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    const name = document.createElement("th");
    name.scope = "row";
    name.dataset.label = COLUMNS[0];
    const button = el("button", "link open");
    button.type = "button";
    button.addEventListener("click", () => openDetail(tr.dataset.id, button));
    name.append(button);
    tr.append(name);
    for (const label of COLUMNS.slice(1)) {
      const td = document.createElement("td");
      td.dataset.label = label;
      tr.append(td);
    }
    return tr;
  }

  function fillRow(tr, row, at) {
    const cells = tr.children;
    const metadata = metadataOf(row);
    const button = cells[0].firstChild;
    button.textContent = row.connectionName;
    button.setAttribute("aria-label", "Details of " + row.connectionName);
    fillPresence(tr, row, at);
    setText(cells[2], row.currentMode, { className: "mode" });
    setText(cells[3], metadata.gitBranch, { className: "mono" });
    setText(cells[4], metadata.workingDirectory, {
      className: "path mono",
      title: true,
      inner: true,
    });
    setText(cells[5], metadata.nodeVersion);
    setText(cells[6], metadata.lettaCodeVersion);
    setText(cells[7], row.source);
    setText(cells[8], row.userId, { title: true });
    setText(cells[9], row.podId, { className: "mono", title: true });
    setTime(cells[10], row.connectedAt, at);
    const update = selfUpdateSummary(row);
    setText(cells[12], update.text);
    if (update.title) cells[12].title = update.title;
    else cells[12].removeAttribute("title");
  }

  // What a heartbeat changes in a row: its state and its last heartbeat.
  function fillPresence(tr, row, at) {
    fillState(tr.children[1], row, at);
    setTime(tr.children[11], row.lastHeartbeat, at);
  }

  function fillState(cell, row, at) {
    const kind = stateOf(row, at);
    let badge = cell.firstElementChild;
    if (!badge || !badge.classList.contains("badge")) {
      badge = el("span", "badge");
      cell.replaceChildren(badge);
    }
    if (badge.dataset.state !== kind) {
      badge.dataset.state = kind;
      badge.className = "badge state-" + kind;
      badge.textContent = kind;
      badge.title = {
        online: "connected, heartbeat within the online window",
        lost: "connected, but no heartbeat within the online window",
        left: "not connected",
      }[kind];
    }
  }

  function displayed() {
    return [...state.order, ...state.extras].filter((id) => state.rows.has(id));
  }

  function renderAll() {
    if (!state.key) return;
    const at = now();
    const ids = displayed();
    const tbody = $("rows");
    const wanted = new Set(ids);
    for (const [id, tr] of rowElements) {
      if (!wanted.has(id)) {
        tr.remove();
        rowElements.delete(id);
      }
    }
    let previous = null;
    for (const id of ids) {
      let tr = rowElements.get(id);
      if (!tr) {
        tr = buildRow(id);
        rowElements.set(id, tr);
      }
      fillRow(tr, state.rows.get(id), at);
      // Move a row only when it is out of place, so that a focused button keeps its focus.
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      previous = tr;
    }
    const count = ids.length;
    $("count").textContent = count
      ? "(" + count + (state.hasNext ? "+" : "") + ")"
      : "";
    const first = ids.length ? state.rows.get(ids[0]) : null;
    $("org").textContent = first ? "organization " + first.organizationId : "";
    $("more").hidden = !state.hasNext;
    $("table-wrap").hidden = count === 0;
    $("empty").hidden = count !== 0 || state.hasNext || !state.loaded;
    $("empty-none").hidden = filtersActive();
    $("empty-filtered").hidden = !filtersActive();
  }

  // Once a second: the ages, and the state, which changes with time alone (online → lost).
  function tick() {
    if (!state.key) return;
    const at = now();
    if (state.filters.onlineOnly) {
      const gone = displayed().filter((id) => !isOnline(state.rows.get(id), at));
      if (gone.length) {
        for (const id of gone) forget(id);
        renderAll();
      }
    }
    for (const time of document.querySelectorAll("time.ago")) {
      const ms = Number(time.dataset.ms);
      const text = ago(ms, at);
      if (time.textContent !== text) time.textContent = text;
    }
    for (const [id, tr] of rowElements) {
      const row = state.rows.get(id);
      if (row) fillState(tr.children[1], row, at);
    }
    const detailBadge = $("detail-state");
    if (state.detail && detailBadge) fillState(detailBadge, state.detail.row, at);
  }

  function focusLastRow() {
    const buttons = $("rows").querySelectorAll("button.open");
    if (buttons.length) buttons[buttons.length - 1].focus();
  }

  // --- the detail view ----------------------------------------------------------------------

  const ROW_FIELDS = [
    ["connectionName", "Name"],
    ["id", "Id"],
    ["deviceId", "Device id"],
    ["connectionId", "Connection id"],
    ["organizationId", "Organization"],
    ["userId", "User"],
    ["apiKeyOwner", "Key owner"],
    ["currentMode", "Mode"],
    ["source", "Source"],
    ["podId", "Pod"],
    ["firstSeenAt", "First seen", "time"],
    ["connectedAt", "Connected", "time"],
    ["lastSeenAt", "Last seen", "time"],
    ["lastHeartbeat", "Last heartbeat", "time"],
  ];
  const METADATA_FIELDS = [
    ["os", "OS"],
    ["nodeVersion", "Node"],
    ["lettaCodeVersion", "Client version"],
    ["gitBranch", "Git branch"],
    ["workingDirectory", "Working directory"],
    ["supported_commands", "Supported commands"],
  ];
  const SELF_UPDATE_FIELDS = [
    ["supported", "Supported"],
    ["writable", "Writable"],
    ["install_path", "Install path"],
    ["manual_command", "Manual command"],
    ["reason", "Reason"],
  ];

  function describe(value) {
    if (value === true) return "yes";
    if (value === false) return "no";
    if (Array.isArray(value) && value.every((item) => typeof item === "string")) {
      return value.join(", ");
    }
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function fillFields(dl, object, known, at) {
    dl.replaceChildren();
    const add = (label, value, kind, key) => {
      const dt = el("dt", null, label);
      const dd = el("dd");
      dd.dataset.field = key;
      if (kind === "time") setTime(dd, value, at);
      else if (value == null || value === "") dd.append(el("span", "none", "—"));
      else dd.append(el("span", "value", describe(value)));
      dl.append(dt, dd);
    };
    for (const [key, label, kind] of known) add(label, object[key], kind, key);
    const shown = new Set(known.map(([key]) => key));
    for (const key of Object.keys(object).sort()) {
      if (!shown.has(key)) add(key, object[key], undefined, key);
    }
  }

  function renderDetail() {
    const detail = state.detail;
    if (!detail) return;
    const row = detail.row;
    const at = now();
    const title = $("detail-title");
    title.replaceChildren(el("span", "detail-name", row.connectionName));
    const badge = el("span", "badge");
    badge.id = "detail-state";
    title.append(" ", badge);
    fillState(badge, row, at);

    const top = { ...row };
    delete top.metadata;
    fillFields($("detail-fields"), top, ROW_FIELDS, at);
    const metadata = { ...metadataOf(row) };
    const update = metadata.self_update;
    delete metadata.self_update;
    fillFields($("detail-metadata"), metadata, METADATA_FIELDS, at);
    const updateList = $("detail-self-update");
    if (update && typeof update === "object") {
      fillFields(updateList, update, SELF_UPDATE_FIELDS, at);
    } else {
      updateList.replaceChildren(el("dt", null, "Self-update"), el("dd", "none", "not reported"));
    }

    const select = $("mode-select");
    if (!detail.modeDirty && MODES.includes(row.currentMode)) select.value = row.currentMode;
    const connected = row.connectionId != null;
    select.disabled = !connected || detail.sending;
    $("mode-send").disabled = !connected || detail.sending;
    if (!connected && !detail.sending) {
      $("mode-status").textContent = "Not connected: a mode can be sent only to a live daemon.";
    } else if (detail.requestedMode && row.currentMode === detail.requestedMode) {
      $("mode-status").textContent = "The daemon is now in " + row.currentMode + ".";
      detail.requestedMode = null;
      detail.modeDirty = false;
    } else if (!detail.requestedMode && !detail.sending) {
      $("mode-status").textContent = "";
    }
  }

  function fillDetailPresence(row, at) {
    const badge = $("detail-state");
    if (badge) fillState(badge, row, at);
    const heartbeat = $("detail-fields").querySelector('[data-field="lastHeartbeat"]');
    if (heartbeat) setTime(heartbeat, row.lastHeartbeat, at);
  }

  function updateDetail(row) {
    if (state.detail && state.detail.id === row.id && isFresher(row, state.detail.row)) {
      state.detail.row = keepingHeartbeat(row, state.detail.row);
      renderDetail();
    }
  }

  async function openDetail(id, opener) {
    const row = state.rows.get(id);
    if (!row) return;
    state.opener = opener || null;
    state.detail = { id, row, requestedMode: null, modeDirty: false };
    clearError("detail");
    clearError("mode");
    $("mode-status").textContent = "";
    renderDetail();
    const dialog = $("detail");
    if (!dialog.open) dialog.showModal();
    $("detail-close").focus();
    await refreshDetail();
  }

  async function refreshDetail() {
    const detail = state.detail;
    if (!detail) return;
    const gen = state.generation;
    let row;
    try {
      row = await api("/v1/environments/" + encodeURIComponent(detail.id));
    } catch (error) {
      if (gen !== state.generation || state.detail !== detail) return;
      if (error instanceof ApiError && error.status === 404) {
        showError("detail", "The platform no longer knows this environment: " + error.message);
        return;
      }
      failed(error, "detail");
      return;
    }
    if (gen !== state.generation || state.detail !== detail) return;
    clearError("detail");
    updateDetail(row);
  }

  function closeDetail() {
    const dialog = $("detail");
    state.detail = null;
    if (dialog.open) dialog.close();
  }

  async function sendMode(event) {
    event.preventDefault();
    const detail = state.detail;
    if (!detail || detail.row.connectionId == null) return;
    const mode = $("mode-select").value;
    const gen = state.generation;
    detail.sending = true;
    detail.requestedMode = null;
    clearError("mode");
    $("mode-status").textContent = "Sending " + mode + "…";
    renderDetail();
    const frame = { type: "change_device_state", payload: { mode } };
    try {
      await api(
        "/v1/environments/" + encodeURIComponent(detail.row.connectionId) + "/frames",
        { method: "POST", body: frame }
      );
      if (state.detail !== detail) return;
      detail.requestedMode = mode;
      $("mode-status").textContent = "Sent " + mode + "; waiting for the daemon to confirm…";
    } catch (error) {
      if (gen !== state.generation || state.detail !== detail) return;
      $("mode-status").textContent = "";
      if (error instanceof ApiError && error.status === 401) {
        failed(error, "mode");
      } else if (error instanceof ApiError && error.status === 404) {
        showError("mode", "The daemon is not connected now: " + error.message);
      } else {
        // 403 among others: the platform's own words say who may steer this row.
        showError("mode", error.message);
      }
    } finally {
      if (state.detail === detail) {
        detail.sending = false;
        renderDetail();
      }
    }
  }

  // --- wiring -------------------------------------------------------------------------------

  function readFilters() {
    return {
      onlineOnly: $("filter-online").checked,
      source: $("filter-source").value,
      userId: $("filter-user").value.trim(),
    };
  }

  function showFilters() {
    $("filter-online").checked = state.filters.onlineOnly;
    $("filter-source").value = state.filters.source;
    $("filter-user").value = state.filters.userId;
  }

  async function applyFilters() {
    const next = readFilters();
    const f = state.filters;
    if (next.onlineOnly === f.onlineOnly && next.source === f.source && next.userId === f.userId) {
      return;
    }
    state.filters = next;
    sessionStorage.setItem(FILTER_STORAGE, JSON.stringify(next));
    try {
      await resetListing();
    } catch (error) {
      failed(error, "list");
    }
  }

  function loadFilters() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(FILTER_STORAGE) || "null");
      if (saved && typeof saved === "object") {
        state.filters = {
          onlineOnly: saved.onlineOnly === true,
          source: saved.source === "local" || saved.source === "remote" ? saved.source : "",
          userId: typeof saved.userId === "string" ? saved.userId : "",
        };
      }
    } catch (_) {
      /* a damaged entry: the defaults */
    }
    showFilters();
  }

  function init() {
    const command =
      "LETTA_BASE_URL=" + location.origin + " LETTA_API_KEY=envk_… envagent run";
    $("connect-command").textContent = command;
    const copy = $("copy-command");
    if (navigator.clipboard && window.isSecureContext) {
      copy.hidden = false;
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(command);
          copy.textContent = "Copied";
        } catch (_) {
          copy.textContent = "Copy failed";
        }
      });
    }

    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        showError("sign-in", "Paste an API key first.");
        $("api-key").focus();
        return;
      }
      signIn(key);
    });
    $("sign-out").addEventListener("click", () => signOut(null));
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      applyFilters();
    });
    $("filter-online").addEventListener("change", applyFilters);
    $("filter-source").addEventListener("change", applyFilters);
    $("filter-user").addEventListener("change", applyFilters);
    $("more").addEventListener("click", loadMore);
    $("mode-form").addEventListener("submit", sendMode);
    $("mode-select").addEventListener("change", () => {
      if (state.detail) state.detail.modeDirty = true;
    });
    $("detail-close").addEventListener("click", closeDetail);
    const dialog = $("detail");
    dialog.addEventListener("close", () => {
      state.detail = null;
      const opener = state.opener;
      state.opener = null;
      if (opener && opener.isConnected) opener.focus();
    });
    // A click on the backdrop (outside the dialog's box) closes it too.
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) {
        const box = dialog.getBoundingClientRect();
        const inside =
          event.clientX >= box.left &&
          event.clientX <= box.right &&
          event.clientY >= box.top &&
          event.clientY <= box.bottom;
        if (!inside) closeDetail();
      }
    });

    loadFilters();
    setInterval(tick, 1000);
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      resume(saved);
    } else {
      $("sign-in").hidden = false;
      $("api-key").focus();
    }
  }

  init();
})();

// smallfirst widget: ghost-text autocomplete and streamed answers over one WebSocket.
// Plain ES module, no build step. Model output is always rendered with textContent.

/** Open a protocol client on `url` (default: this page's /ws); reconnects after a drop. */
export function connect(url = defaultUrl()) {
  const handlers = new Map();
  const listeners = new Set();
  let socket = null;
  let counter = 0;
  let backoff = 250;
  const client = {
    ready: null,
    nextId(prefix) { counter += 1; return `${prefix}${Date.now().toString(36)}-${counter}`; },
    /** Send a request frame; `on` receives every frame for its id until done or error. */
    request(frame, on) {
      handlers.set(frame.id, on);
      if (!send(frame)) { handlers.delete(frame.id); on({ type: "error", id: frame.id, code: "busy", message: "not connected", retryable: true }); }
    },
    cancel(id) { send({ type: "cancel", id }); },
    onStatus(fn) { listeners.add(fn); },
  };
  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }
  function status(text) { listeners.forEach((fn) => fn(text)); }
  function open() {
    socket = new WebSocket(url);
    socket.onopen = () => { backoff = 250; };
    socket.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === "ready") { client.ready = frame; status(`connected · ${frame.model}`); return; }
      const on = handlers.get(frame.id);
      if (on) on(frame);
      if (frame.type === "done" || frame.type === "error") handlers.delete(frame.id);
    };
    socket.onclose = () => {
      status("disconnected · retrying");
      for (const [id, on] of handlers) on({ type: "error", id, code: "busy", message: "connection lost", retryable: true });
      handlers.clear();
      setTimeout(open, backoff);
      backoff = Math.min(backoff * 2, 5000);
    };
  }
  open();
  return client;
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/ws`;
}

/**
 * Ghost-text autocomplete on a textarea laid over a mirror element.
 * `mirror` holds two spans: the typed text (invisible) and the suggestion (grey).
 */
export function attachAutocomplete(textarea, mirror, client, { debounceMs = 150, minDebounceMs = 50, maxTokens = 16, onTiming } = {}) {
  const typed = mirror.querySelector(".typed");
  const ghost = mirror.querySelector(".ghost");
  let timer = null;
  let current = null; // { id, text } of the request whose suggestion may be painted
  let suggestion = "";
  // Adaptive debounce: start at debounceMs; while the server's first tokens come back fast,
  // wait less after each keystroke (about twice the recent time to first token).
  let firstTokenMs = null;
  let delay = debounceMs;
  function learn(ms) {
    firstTokenMs = firstTokenMs === null ? ms : 0.8 * firstTokenMs + 0.2 * ms;
    delay = Math.round(Math.min(debounceMs, Math.max(minDebounceMs, 2 * firstTokenMs)));
    onTiming?.({ firstTokenMs: Math.round(firstTokenMs), debounceMs: delay });
  }

  function paint() {
    typed.textContent = textarea.value;
    const atEnd = textarea.selectionStart === textarea.value.length && textarea.selectionEnd === textarea.value.length;
    ghost.textContent = atEnd ? suggestion : "";
    mirror.scrollTop = textarea.scrollTop;
  }
  function clear() {
    if (current) client.cancel(current.id);
    current = null;
    suggestion = "";
    paint();
  }
  function request() {
    const text = textarea.value;
    if (!text.trim()) { clear(); return; }
    const id = client.nextId("c");
    current = { id, text };
    suggestion = "";
    const sentAt = performance.now();
    let first = true;
    client.request({ type: "complete", id, text, max_tokens: maxTokens }, (frame) => {
      if (frame.type === "token" && first) { first = false; learn(performance.now() - sentAt); }
      // Paint only a suggestion for exactly the text now in the box: a stale one is dropped.
      if (!current || current.id !== frame.id || textarea.value !== current.text) return;
      if (frame.type === "token") { suggestion += frame.text; paint(); }
    });
  }
  textarea.addEventListener("input", () => {
    const previous = current ? current.text + suggestion : null;
    const text = textarea.value;
    // Typing into the suggestion keeps the rest of it without a new request.
    if (current && previous && previous.startsWith(text) && text.length > current.text.length && text.startsWith(current.text)) {
      suggestion = previous.slice(text.length);
      current = { id: current.id, text };
      paint();
      if (suggestion) return;
    } else {
      clear(); // the text moved past the suggestion: stop one still being computed, not a debounce later
    }
    clearTimeout(timer);
    timer = setTimeout(request, delay);
  });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Tab" && suggestion) {
      event.preventDefault();
      textarea.value += suggestion;
      textarea.selectionStart = textarea.selectionEnd = textarea.value.length;
      current = null;
      suggestion = "";
      paint();
      clearTimeout(timer);
      timer = setTimeout(request, delay);
    } else if (event.key === "Escape") {
      clearTimeout(timer);
      clear();
    }
  });
  textarea.addEventListener("scroll", paint);
  textarea.addEventListener("click", paint);
  textarea.addEventListener("keyup", paint);
  paint();
}

function sourceHref(source) {
  if (/^https?:\/\//.test(source.uri)) return source.uri;
  return `/api/source?doc_id=${encodeURIComponent(source.doc_id)}`;
}

// Why an answer left the small model, as the end of a sentence.
const ESCALATION_WHY = {
  no_context: "the question is not covered by the documents",
  low_grounding: "the documents barely touch the question",
  hard_query: "the question is hard",
  small_unavailable: "the small model is busy",
};
// What went wrong with the large model, as the start of a clause.
const FALLBACK_WHAT = {
  large_unavailable: "the large model is unavailable",
  large_timeout: "the large model did not answer in time",
  large_error: "the large model failed",
};

/**
 * The route an answer took, in one plain sentence, from what its frames said: `escalation`
 * (reason) and `escalationTier` of its `escalated` frame, `fallback` (reason) of its `fallback`
 * frame, `forced` (the tier the page asked for), and from `done`: `flagged` and `supported`.
 */
export function routeSentence({ escalation = null, escalationTier = null, fallback = null, forced = null,
                                flagged = false, supported, done = false } = {}) {
  const failed = FALLBACK_WHAT[fallback] ?? (fallback && fallback !== "large_unconfigured" ? `the large model failed (${fallback})` : null);
  if (escalation === "unsupported_answer") {
    if (escalationTier === "large" && !fallback && !flagged) {
      return `Checked against the sources: not supported, so the large model ${done ? "answered" : "answers"} instead.`;
    }
    return failed
      ? `Checked against the sources: not supported, and ${failed}, so the closest passage is shown instead.`
      : "Checked against the sources: not supported, so the closest passage is shown instead.";
  }
  if (escalation) {
    const why = ESCALATION_WHY[escalation] ?? `the router chose it (${escalation})`;
    if (!fallback) return `Sent to the large model: ${why}.`;
    if (escalation === "no_context" || escalation === "low_grounding") {
      return fallback === "large_unconfigured"
        ? "Not covered by the documents, and no large model is configured to answer instead."
        : `Not covered by the documents, and ${failed}, so nothing else could answer.`;
    }
    return fallback === "large_unconfigured"
      ? `No large model is configured, so the small model answered (${why}).`
      : `Sent to the large model (${why}), but ${failed}, so the small model answered.`;
  }
  if (fallback) {
    return fallback === "large_unconfigured"
      ? "No large model is configured, so the small model answered."
      : `${failed[0].toUpperCase()}${failed.slice(1)}, so the small model answered.`;
  }
  if (!done) return forced === "large" ? "Asked of the large model, as requested." : "";
  if (forced === "large") return "Answered by the large model, as requested.";
  const asked = forced === "small" ? ", as requested" : "";
  if (supported === true) return `Answered by the small model${asked}, and checked against the sources.`;
  if (supported === false) return `Answered by the small model${asked}; the sources do not support it.`;
  return `Answered by the small model${asked}.`;
}

/** What a `busy` refusal means, and whether the page tries again by itself. */
export function busySentence(retryAfterMs, retrying) {
  const seconds = Math.max(1, Math.ceil((retryAfterMs ?? 1000) / 1000));
  return retrying
    ? `The small model is busy; trying again in ${seconds} s.`
    : `The small model is still busy; please try again in a few seconds.`;
}

/** Each source with its title link, score, and its evidence sentence highlighted (the best one marked as top). */
function renderSources(list, sources) {
  list.replaceChildren();
  if (!sources.length) { list.textContent = "No matching sources."; return; }
  let top = -1;
  sources.forEach((s, i) => { if (s.evidence && (top < 0 || s.evidence.score > sources[top].evidence.score)) top = i; });
  for (const [i, source] of sources.entries()) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = sourceHref(source);
    link.target = "_blank";
    link.rel = "noopener";
    link.textContent = `[${i + 1}] ${source.title}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = ` ${source.score.toFixed(2)}`;
    item.append(link, score);
    if (source.evidence) {
      const quote = document.createElement("mark");
      quote.className = i === top ? "evidence top" : "evidence";
      quote.textContent = source.evidence.text;
      item.append(quote);
    } else {
      const snippet = document.createElement("p");
      snippet.textContent = source.snippet;
      item.append(snippet);
    }
    list.append(item);
  }
}

/**
 * Ask `question` and stream the answer and its sources into `view` ({answer, sources, meta, route}).
 * A small-tier answer shows as "checking" until its support check passes; one that fails is
 * replaced (an `escalated` frame with reason `unsupported_answer` clears it). The route line says
 * in one sentence where the answer came from and why. A `busy` refusal is retried once, after
 * `retry_after_ms`. `tier` forces a tier. Returns a stop function.
 */
export function askInto(view, client, question, { topK, tier: forced = null } = {}) {
  let id = null;
  let retry = null;
  let stopped = false;
  const showRoute = (text) => { if (view.route) view.route.textContent = text; };
  function start(retried) {
    id = client.nextId("a");
    view.answer.textContent = "";
    view.answer.className = "answer";
    view.sources.replaceChildren();
    view.meta.textContent = retried ? "retrying…" : "retrieving…";
    const frame = { type: "ask", id, question };
    if (topK) frame.top_k = topK;
    if (forced) frame.tier = forced;
    const route = { escalation: null, escalationTier: null, fallback: null, forced };
    let tier = forced === "large" ? "large" : "small";
    showRoute(routeSentence(route));
    client.request(frame, (msg) => {
      if (msg.type === "sources") {
        view.meta.textContent = "generating…";
        renderSources(view.sources, msg.sources);
      } else if (msg.type === "escalated") {
        route.escalation = msg.reason;
        route.escalationTier = msg.tier;
        tier = msg.tier;
        if (msg.reason === "unsupported_answer") view.answer.textContent = "";
        view.answer.className = tier === "small" ? "answer pending" : "answer";
        showRoute(routeSentence(route));
      } else if (msg.type === "fallback") {
        tier = "small";
        route.fallback = msg.reason;
        showRoute(routeSentence(route));
      } else if (msg.type === "token") {
        if (tier === "small" && !view.answer.textContent) view.answer.className = "answer pending";
        view.answer.textContent += msg.text;
      } else if (msg.type === "done") {
        view.answer.className = msg.flagged ? "answer flagged" : "answer";
        if (msg.supported === false && !msg.flagged && !route.escalation) view.answer.className = "answer flagged";
        showRoute(routeSentence({ ...route, flagged: Boolean(msg.flagged), supported: msg.supported, done: true }));
        const t = msg.timings_ms;
        const check = msg.supported === undefined ? "" : msg.supported ? " · checked against the sources" : " · not supported by the sources";
        view.meta.textContent = `${msg.finish} · ${msg.tier}${check} · first token ${t.first_token ?? "–"} ms · total ${t.total} ms · ${msg.usage.completion_tokens} tokens`;
        view.onDone?.();
      } else if (msg.type === "error") {
        if (msg.code === "busy" && msg.retry_after_ms && !retried && !stopped) {
          showRoute(busySentence(msg.retry_after_ms, true));
          view.meta.textContent = `busy: ${msg.message}`;
          retry = setTimeout(() => { retry = null; if (!stopped) start(true); }, msg.retry_after_ms);
          return;
        }
        if (msg.code === "busy") showRoute(busySentence(msg.retry_after_ms, false));
        const again = msg.retry_after_ms ? ` · try again in about ${Math.ceil(msg.retry_after_ms / 1000)} s` : "";
        view.meta.textContent = `error (${msg.code}): ${msg.message}${again}`;
        view.onDone?.();
      }
    });
  }
  start(false);
  return () => {
    stopped = true;
    if (retry !== null) { clearTimeout(retry); retry = null; view.onDone?.(); return; }
    client.cancel(id);
  };
}

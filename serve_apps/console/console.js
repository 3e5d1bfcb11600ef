// The LaMDA console: chat with a role, see how each reply was chosen, rate it (paper §4-5).
// Plain DOM: every text from the model, the tools or the store goes in as a text node, never as
// HTML; links are made only for http(s) URLs. All calls go to this origin, relative to the page.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { conversation: null, busy: false, key: null };

// -- DOM helpers ---------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function link(url) {  // a citation: a link only for http(s), plain text otherwise (dict://...)
  let safe = null;
  try { safe = ["http:", "https:"].includes(new URL(url).protocol) ? url : null; } catch (e) { /* text */ }
  return safe ? el("a", { href: safe, target: "_blank", rel: "noopener noreferrer" }, url) : el("code", {}, url);
}

const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "");

// -- API ------------------------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const why = (data.error && data.error.message) || response.statusText;
    throw new Error(response.status === 401 ? "enter the service's API key above (" + why + ")" : why);
  }
  return data;
}

function say(message) { $("status").textContent = message || ""; }

async function loadRoles() {
  try {
    const models = await api("GET", "v1/models");
    const select = $("role");
    const chosen = select.value || sessionStorage.getItem("lamda.role");
    select.replaceChildren(...models.data.map((m) => el("option", { value: m.id, title: m.description || "" }, m.id)));
    if (chosen && models.data.some((m) => m.id === chosen)) select.value = chosen;
    say("");
  } catch (e) { say(e.message); }
}

// -- rendering ------------------------------------------------------------------------------------

function renderTurn(turn, ratings = []) {
  if (turn.speaker !== "lamda") {
    $("log").append(el("div", { class: "turn user" }, el("div", { class: "who" }, "you"),
                       el("div", { class: "text" }, turn.text)));
    return;
  }
  const box = el("div", { class: "turn lamda", "data-turn": turn.index },
                 el("div", { class: "who" }, "LaMDA" + (turn.trace && turn.trace.model ? " (" + turn.trace.model + ")" : "")),
                 el("div", { class: "text" }, turn.text));
  const form = ratingForm(turn);
  if (turn.trace) box.append(traceView(turn.trace, form));
  box.append(form.node, ratingList(ratings));
  $("log").append(box);
  box.scrollIntoView({ block: "end" });
}

function traceView(trace, form) {
  const details = el("details", { class: "trace" }, el("summary", {}, "Trace: " + trace.candidates.length +
    " candidates, " + (trace.research ? trace.research.steps.length : 0) + " research steps"));
  const seconds = Object.entries(trace.seconds || {}).map(([k, v]) => k + " " + v.toFixed(2) + " s").join(", ");
  details.append(el("p", { class: "meta" }, "FLOPs " + (trace.flops || 0).toExponential(2) + " · energy " +
    fmt((trace.energy_kwh || 0) * 1000, 4) + " Wh" + (seconds ? " · " + seconds : "") +
    (trace.fallback ? " · every candidate was unsafe: the safe fallback was sent" : "")));

  const chosen = trace.candidates.findIndex((c) => !c.filtered && c.text === trace.draft);
  const rows = trace.candidates.map((c, i) => el("tr", {
    class: c.filtered ? "filtered" : i === chosen ? "chosen" : "" },
    el("td", { class: "num" }, i), el("td", {}, c.text),
    ...["sensible", "specific", "interesting", "unsafe", "quality"].map((k) => el("td", { class: "num" }, fmt(c[k]))),
    el("td", {}, c.filtered ? "filtered: " + c.filtered : i === chosen ? "chosen draft" : ""),
    el("td", {}, el("button", { type: "button", class: "rate-candidate", onclick: () => form.target(i) }, "rate"))));
  details.append(el("table", { class: "candidates" }, el("tr", {},
    ...["#", "candidate", "sensible", "specific", "interesting", "unsafe", "3S+Sp+I", "", ""].map((h) => el("th", {}, h))), rows));

  if (trace.research) {
    details.append(el("h4", {}, "Research"), el("ol", { class: "research" }, trace.research.trace.map((s) =>
      s.from === "TS"
        ? el("li", {}, "TS ← " + s.query, el("ul", {}, (s.results.length ? s.results : ["(no result)"]).map((r) => el("li", {}, r))))
        : el("li", {}, s.from + (s.to ? " → " + s.to : "") + ": " + s.text))));
  }
  if (trace.tool_calls && trace.tool_calls.length) {
    details.append(el("h4", {}, "Tool calls"), el("ul", { class: "research" }, trace.tool_calls.map((q) =>
      el("li", {}, q.query, el("ul", {}, q.calls.map((c) => el("li", {}, c.tool + ": " +
        (c.error ? "error " + c.error : c.results.length ? c.results.join(" | ") : "nothing"))))))));
  }
  if (trace.citations && trace.citations.length) {
    details.append(el("p", { class: "citations" }, "Sources: ", trace.citations.map((u, i) => [i ? ", " : "", link(u)])));
  }
  return details;
}

function ratingForm(turn) {
  let candidate = null;
  const label = el("strong", {}, "Rate the reply");
  const box = (name, checked) => el("input", { type: "checkbox", name, checked });
  const sensible = box("sensible", true), specific = box("specific", false), interesting = box("interesting", false);
  const safe = box("safe", true);
  const choice = (name) => el("select", { name }, el("option", { value: "" }, "n/a"),
                              el("option", { value: "true" }, "yes"), el("option", { value: "false" }, "no"));
  const grounded = choice("grounded"), helpful = choice("helpful");
  const note = el("textarea", { name: "note", rows: 1, maxlength: 2000, placeholder: "note (optional)" });
  const result = el("span", { class: "result" });

  function cascade() {  // not sensible => not specific => not interesting (paper §4.1)
    specific.disabled = !sensible.checked;
    if (specific.disabled) specific.checked = false;
    interesting.disabled = !specific.checked;
    if (interesting.disabled) interesting.checked = false;
  }
  [sensible, specific].forEach((b) => b.addEventListener("change", cascade));
  cascade();

  async function submit(event) {
    event.preventDefault();
    const rater = $("rater").value.trim();
    if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(rater)) { say("enter a rater name (letters, digits, _ . @ -)"); return; }
    const ssi = interesting.checked ? "interesting" : specific.checked ? "specific" : sensible.checked ? "sensible" : "not_sensible";
    const opt = (s) => (s.value === "" ? null : s.value === "true");
    const body = { conversation_id: state.conversation, turn: turn.index, rater, ssi, safe: safe.checked,
                   grounded: opt(grounded), helpful: opt(helpful), note: note.value };
    if (candidate !== null) body.candidate = candidate;
    try {
      const stored = await api("POST", "ratings", body);
      result.textContent = "saved";
      node.parentNode.querySelector(".ratings").append(ratingItem(stored));
      say("");
    } catch (e) { say(e.message); }
  }

  const node = el("form", { class: "rating", onsubmit: submit }, label,
    el("fieldset", {}, el("label", {}, sensible, "sensible"), el("label", {}, specific, "specific"),
       el("label", {}, interesting, "interesting"), el("label", {}, safe, "safe"),
       el("label", {}, "grounded ", grounded), el("label", {}, "helpful ", helpful)),
    note, el("button", { type: "submit" }, "Save rating"), " ", result);
  return { node, target(i) {
    candidate = i;
    label.textContent = "Rate candidate " + i;
    result.textContent = "";
    node.scrollIntoView({ block: "center" });
  } };
}

function ratingItem(r) {
  const parts = [r.rater, r.candidate === null ? "reply" : "candidate " + r.candidate, r.ssi.replace("_", " "),
                 r.safe ? "safe" : "unsafe"];
  if (r.grounded !== null) parts.push(r.grounded ? "grounded" : "not grounded");
  if (r.helpful !== null) parts.push(r.helpful ? "helpful" : "not helpful");
  return el("li", { "data-rating": r.id }, parts.join(" · ") + (r.note ? " — " + r.note : ""));
}

function ratingList(ratings) {
  return el("ul", { class: "ratings" }, ratings.map(ratingItem));
}

// -- conversation ---------------------------------------------------------------------------------

function setConversation(id) {
  state.conversation = id;
  $("conversation").textContent = id ? "conversation " + id : "new conversation";
  history.replaceState(null, "", id ? "#c=" + id : location.pathname);
}

async function openConversation(id) {
  try {
    const data = await api("GET", "conversations/" + encodeURIComponent(id));
    $("log").replaceChildren();
    setConversation(data.conversation_id);
    for (const t of data.turns) renderTurn(t, data.ratings.filter((r) => r.turn === t.index));
    say("");
  } catch (e) { say(e.message); }
}

async function send(event) {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || state.busy) return;
  state.busy = true;
  $("send-button").disabled = true;
  say("LaMDA is answering…");
  try {
    const body = { message: text, model: $("role").value || "lamda", trace: true };
    if (state.conversation) body.conversation_id = state.conversation;
    const answer = await api("POST", "chat", body);
    setConversation(answer.conversation_id);
    renderTurn({ index: answer.turn - 1, speaker: "user", text });
    renderTurn({ index: answer.turn, speaker: "lamda", text: answer.reply, trace: answer.trace });
    $("message").value = "";
    say("");
  } catch (e) {
    say(e.message);
  } finally {
    state.busy = false;
    $("send-button").disabled = false;
  }
}

function init() {
  $("rater").value = localStorage.getItem("lamda.rater") || "";
  $("key").value = state.key = sessionStorage.getItem("lamda.key") || "";
  $("rater").addEventListener("change", () => localStorage.setItem("lamda.rater", $("rater").value.trim()));
  $("key").addEventListener("change", () => {  // a new key: reload what it may see (once)
    if ($("key").value.trim() === state.key) return;
    state.key = $("key").value.trim();
    sessionStorage.setItem("lamda.key", state.key);
    loadRoles();
    if (state.conversation) openConversation(state.conversation);
  });
  $("role").addEventListener("change", () => sessionStorage.setItem("lamda.role", $("role").value));
  $("new").addEventListener("click", () => { $("log").replaceChildren(); setConversation(null); });
  $("send").addEventListener("submit", send);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("send").requestSubmit(); }
  });
  window.addEventListener("hashchange", openFromHash);
  loadRoles();
  openFromHash();
}

function openFromHash() {  // #c=<conversation id>: a link to a conversation, e.g. to rate it
  const opened = /^#c=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  if (!opened) setConversation(null);
  else if (opened[1] !== state.conversation) openConversation(opened[1]);
}

document.addEventListener("DOMContentLoaded", init);

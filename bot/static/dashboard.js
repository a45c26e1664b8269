// storedesk dashboard: fetches /api/dashboard/* with the session cookie and draws Chart.js charts.
// Every chart is kept in window.storedeskCharts (by name) so tests can read what was drawn.
"use strict";

const STAGE_COLORS = {
  awareness: "#60a5fa", consideration: "#a78bfa", purchase: "#34d399", retention: "#fbbf24",
  advocacy: "#f472b6", at_risk: "#ef4444", unknown: "#9ca3af", new: "#cbd5e1",
};
const PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16",
  "#ec4899", "#64748b", "#f97316"];
const STAGES = ["awareness", "consideration", "purchase", "retention", "advocacy", "at_risk"];
const charts = (window.storedeskCharts = {});
const state = { offset: 0, loading: 0 };

const $ = (sel) => document.querySelector(sel);
const color = (key, i) => STAGE_COLORS[key] || PALETTE[i % PALETTE.length];

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function periodParams() {
  const form = new FormData($("#period-form"));
  const params = new URLSearchParams({ period: form.get("period") || "7d" });
  if (params.get("period") === "custom") {
    if (form.get("from")) params.set("from", form.get("from"));
    if (form.get("to")) params.set("to", form.get("to"));
  }
  return params;
}

async function api(path, params) {
  const response = await fetch(`${path}?${params}`, { credentials: "same-origin" });
  if (response.status === 401) { window.location = "/dashboard/login"; throw new Error("signed out"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function draw(name, config) {
  if (charts[name]) charts[name].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false,
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } } }, config.options || {});
  charts[name] = new Chart(document.getElementById(`chart-${name}`), config);
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 1000) / 10}%`);

async function loadStages(params) {
  const data = await api("/api/dashboard/stages", params);
  $("#as-of").textContent = `data as of ${data.as_of.slice(11, 19)} UTC`;
  const stacked = { x: { stacked: true }, y: { stacked: true, beginAtZero: true } };
  draw("customers", {
    type: "line",
    data: { labels: data.labels, datasets: data.customers.map((s, i) => ({
      label: s.stage, data: s.counts, fill: true, pointRadius: 0, tension: 0.25,
      borderColor: color(s.stage, i), backgroundColor: color(s.stage, i) + "aa" })) },
    options: { scales: stacked, plugins: { title: { display: true, text: "Customers per stage" } } },
  });
  draw("conversations", {
    type: "bar",
    data: { labels: data.labels, datasets: data.conversations.map((s, i) => ({
      label: s.stage, data: s.counts, backgroundColor: color(s.stage, i) })) },
    options: { scales: stacked,
      plugins: { title: { display: true, text: "Conversations opened, by stage" } } },
  });
}

async function loadFlow(params) {
  const data = await api("/api/dashboard/flow", params);
  const flows = data.flows.filter((f) => f.from !== f.to);
  draw("flow", {
    type: "bar",
    data: { labels: flows.map((f) => `${f.from} → ${f.to}`), datasets: [{
      label: "customers", data: flows.map((f) => f.customers),
      backgroundColor: flows.map((f) => color(f.to, 0)) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false } },
      scales: { x: { beginAtZero: true } } },
  });
}

async function loadPerformance(params) {
  params.set("by", document.querySelector("input[name=by]:checked").value);
  const data = await api("/api/dashboard/performance", params);
  const keys = data.rows.map((r) => r.key);
  draw("botshare", {
    type: "bar",
    data: { labels: keys, datasets: [{ label: "answered by the bot (%)",
      data: data.rows.map((r) => (r.bot_share === null ? null : Math.round(r.bot_share * 1000) / 10)),
      backgroundColor: keys.map((k, i) => color(k, i)) }] },
    options: { scales: { y: { beginAtZero: true, max: 100 } },
      plugins: { legend: { display: false }, title: { display: true, text: "Answered by the bot (%)" } } },
  });
  const minutes = (s) => (s === null ? null : Math.round(s / 6) / 10);
  draw("response", {
    type: "bar",
    data: { labels: keys, datasets: [
      { label: "1st response p50", data: data.rows.map((r) => minutes(r.first_response_p50_s)), backgroundColor: "#60a5fa" },
      { label: "1st response p90", data: data.rows.map((r) => minutes(r.first_response_p90_s)), backgroundColor: "#1d4ed8" },
      { label: "resolution p50", data: data.rows.map((r) => minutes(r.resolution_p50_s)), backgroundColor: "#fbbf24" },
    ] },
    options: { scales: { y: { beginAtZero: true, title: { display: true, text: "minutes" } } },
      plugins: { title: { display: true, text: "Escalations: time to answer (min)" } } },
  });
  const reasons = [...new Set(data.rows.flatMap((r) => Object.keys(r.reasons)))].sort();
  draw("reasons", {
    type: "bar",
    data: { labels: keys, datasets: reasons.map((reason, i) => ({
      label: reason, data: data.rows.map((r) => r.reasons[reason] || 0), backgroundColor: PALETTE[i % PALETTE.length] })) },
    options: { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } },
      plugins: { title: { display: true, text: "Escalations by reason" } } },
  });
  draw("csat", {
    type: "line",
    data: { labels: data.csat_trend.map((t) => t.bucket), datasets: [{
      label: "average CSAT", data: data.csat_trend.map((t) => t.avg), borderColor: "#10b981",
      backgroundColor: "#10b98133", fill: true, cubicInterpolationMode: "monotone" }] },
    options: { scales: { y: { min: 1, max: 5 } }, plugins: { legend: { display: false } } },
  });
  const body = $("#performance-table tbody");
  body.replaceChildren(...[...data.rows, { ...data.total, key: "all" }].map((r) => el("tr", {},
    el("th", {}, r.key), el("td", {}, String(r.messages)), el("td", {}, pct(r.bot_share)),
    el("td", {}, String(r.escalations)),
    el("td", {}, `${fmtDuration(r.first_response_p50_s)} / ${fmtDuration(r.first_response_p90_s)}`),
    el("td", {}, `${fmtDuration(r.resolution_p50_s)} / ${fmtDuration(r.resolution_p90_s)}`),
    el("td", {}, r.csat_avg === null ? "–" :
      `${r.csat_avg} (${r.csat_prev_avg ?? "–"}) n=${r.csat_count}`))));
}

async function loadFaq(params) {
  const data = await api("/api/dashboard/faq", params);
  const used = data.entries.filter((e) => !e.escalate);
  draw("faq", {
    type: "bar",
    data: { labels: used.map((e) => e.id), datasets: [{ label: "answers given",
      data: used.map((e) => e.hits), backgroundColor: used.map((e) => color(e.stage, 0)) }] },
    options: { indexAxis: "y", plugins: { legend: { display: false },
      title: { display: true, text: "Answers given per FAQ entry" } } },
  });
  $("#never-hit").replaceChildren(...(data.never_hit.length ? data.never_hit.map((id) => el("li", {}, id))
    : [el("li", {}, "every entry was used")]));
  $("#gaps-table tbody").replaceChildren(...data.unanswered.groups.slice(0, 15).map((g) => el("tr", {},
    el("td", {}, String(g.count)),
    el("td", {}, el("strong", {}, g.representative), el("br"),
      el("span", { class: "muted" }, g.questions.slice(1, 4).join(" · "))))));
  $("#download-yaml").href = `/api/dashboard/faq/suggestions.yaml?${params}`;
}

function conversationParams(params) {
  const out = new URLSearchParams();
  const form = new FormData($("#filters"));
  for (const key of ["stage", "channel", "status", "language"]) {
    if (form.get(key)) out.set(key, form.get(key));
  }
  if (form.get("in_period")) for (const [k, v] of params) out.set(k, v);
  return out;
}

async function loadConversations(params, append = false) {
  const query = conversationParams(params);
  state.offset = append ? state.offset + 50 : 0;
  query.set("offset", state.offset);
  const data = await api("/api/conversations", query);
  const rows = data.conversations.map((c) => {
    const tr = el("tr", { "data-id": c.id }, el("td", {}, String(c.id)),
      el("td", {}, c.created_at.slice(0, 16).replace("T", " ")), el("td", {}, c.customer.name || ""),
      el("td", {}, c.channel), el("td", {}, c.language || ""), el("td", {}, c.stage || ""),
      el("td", {}, c.status), el("td", {}, c.last_message));
    tr.addEventListener("click", () => openConversation(c.id, tr));
    return tr;
  });
  const body = $("#conversations-table tbody");
  if (append) body.append(...rows); else body.replaceChildren(...rows);
  $("#conv-count").textContent = `${data.total} conversations`;
  $("#more").hidden = state.offset + data.conversations.length >= data.total;
}

async function post(path, payload) {
  const response = await fetch(path, { method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload) });
  if (response.status === 401) { window.location = "/dashboard/login"; throw new Error("signed out"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function staffName() {
  return ($("#staff-name")?.value || localStorage.getItem("storedesk-staff") || "").trim();
}

function deskPanel(c) {
  if (!c.desk || !c.desk.enabled) return el("p", { class: "muted" }, "The desk is off.");
  const live = c.escalations.find((e) => e.status === "open" || e.status === "taken");
  const closed = !live && c.escalations.length > 0;
  const result = el("p", { id: "desk-result", role: "status", class: "muted" });
  const act = async (action, extra = {}) => {
    const staff = staffName();
    if (!staff) { result.textContent = "Type your name first: customers' figures and the thread show it."; $("#staff-name").focus(); return; }
    localStorage.setItem("storedesk-staff", staff);
    try {
      const r = await post(`/api/dashboard/conversations/${c.id}/actions`, { action, staff, ...extra });
      result.textContent = r.message;
      await openConversation(c.id);
      loadWaiting();
    } catch (err) { result.textContent = `Not done: ${err.message}`; }
  };
  const button = (label, action, extra) => {
    const b = el("button", { type: "button", "data-action": action }, label);
    b.addEventListener("click", () => act(action, extra ? extra() : {}));
    return b;
  };
  const name = el("input", { id: "staff-name", "aria-label": "Your name", placeholder: "Your name", autocomplete: "name" });
  name.value = localStorage.getItem("storedesk-staff") || "";
  const text = el("textarea", { id: "desk-text", rows: "3", "aria-label": "Message to the customer or note",
    placeholder: "Write to the customer, or a note only staff see" });
  const send = el("button", { type: "button", id: "desk-send", class: "primary" }, "Send to customer");
  send.addEventListener("click", () => { if (text.value.trim()) act("reply", { text: text.value }); });
  let typed = 0;  // the customer's web chat shows "typing" while staff write here
  text.addEventListener("input", () => {
    if (Date.now() - typed < 3000 || !text.value.trim()) return;
    typed = Date.now();
    post(`/api/dashboard/conversations/${c.id}/typing`, {}).catch(() => {});
  });
  const note = el("button", { type: "button", id: "desk-note" }, "Add internal note");
  note.addEventListener("click", () => { if (text.value.trim()) act("note", { text: text.value }); });
  const picker = el("select", { id: "desk-faq", "aria-label": "FAQ answer to send" },
    el("option", { value: "" }, "Send FAQ answer…"),
    ...c.desk.answer_options.map((o) => el("option", { value: o.id }, o.label)));
  picker.addEventListener("change", () => { if (picker.value) act("answer", { faq_id: picker.value }); });
  const state = [];
  if (live) {
    state.push(live.status === "open" ? button("Take", "take") : button("Release", "release"));
    state.push(button("Resolve", "resolve"), button("Back to bot", "back"),
      button("Snooze 1 h", "snooze", () => ({ length: "1h" })));
  } else if (closed) {
    state.push(button("Reopen", "reopen"));
  } else {
    state.push(button("Take", "take"));
  }
  const who = live ? (live.status === "taken" ? `with ${live.taken_by.replace(/^web:/, "")}` : `waiting since ${live.created_at.slice(11, 16)}`)
    : closed ? `${c.escalations[c.escalations.length - 1].status}` : "with the bot";
  return el("section", { id: "desk", "aria-label": "Answer this customer" },
    el("h3", {}, `Desk · ${who}`), el("div", { class: "desk-row" }, name, ...state),
    text, el("div", { class: "desk-row" }, send, note, picker), result);
}

async function openConversation(id, row) {
  document.querySelectorAll("#conversations-table tr.active").forEach((r) => r.classList.remove("active"));
  if (row) row.classList.add("active");
  const c = await api(`/api/dashboard/conversations/${id}`, new URLSearchParams());
  const box = $("#conversation");
  box.classList.remove("muted");
  box.dataset.id = String(c.id);
  const kind = (m) => m.direction === "note" ? "note" : m.direction === "in" ? "in"
    : m.author.startsWith("staff") ? "staff" : "out";
  const messages = c.messages.map((m) => el("div", { class: `msg ${kind(m)}` },
    m.direction === "note" ? `📝 ${m.text}` : m.text,
    el("small", {}, [m.direction === "note" ? "internal note, not sent" : "", m.author.replace(/^staff:web:/, "staff:"),
      m.at?.slice(0, 16).replace("T", " "), m.faq_id && `FAQ ${m.faq_id}`, m.decision,
      m.status === "held" ? "held until the customer writes" : ""].filter(Boolean).join(" · "))));
  const stages = c.stage_history.map((s) => el("li", {},
    `${s.at.slice(0, 16).replace("T", " ")}: ${s.from || "new"} → ${s.to} (${s.reason})`));
  const escalations = c.escalations.map((e) => el("li", {},
    `${e.reason}, ${e.status}` + (e.taken_by ? `, answered by ${e.taken_by.replace(/^web:/, "")}` : "") +
    (e.first_response_s !== null ? ` after ${fmtDuration(e.first_response_s)}` : "") +
    (e.csat ? `, CSAT ${e.csat}/5` : "")));
  box.replaceChildren(
    el("h3", {}, `#${c.id} · ${c.customer.name || c.customer.email || "customer"} · ${c.channel} · ${c.language || ""} · ${c.stage || ""} · ${c.status}`),
    deskPanel(c),
    el("h3", {}, "Transcript"), el("div", { id: "transcript" }, ...messages),
    el("h3", {}, "Stage history"), el("ul", { id: "stage-history" }, ...stages),
    el("h3", {}, "Escalations"), el("ul", { id: "escalations" }, ...(escalations.length ? escalations : [el("li", {}, "none")])));
}

async function loadWaiting() {
  const data = await api("/api/dashboard/waiting", new URLSearchParams());
  const box = $("#waiting");
  if (!data.waiting) { box.replaceChildren(el("span", {}, "Nobody is waiting for a person.")); box.className = "waiting none"; return; }
  const o = data.oldest;
  const open = el("button", { type: "button", class: "link", id: "open-oldest" },
    `${o.customer} (${o.channel}, ${o.language || "?"}) for ${fmtDuration(o.waiting_s)}`);
  open.addEventListener("click", () => openConversation(o.conversation_id));
  box.className = "waiting";
  box.replaceChildren(el("strong", { id: "waiting-count" }, `${data.waiting} waiting now`), " · oldest: ", open);
}

async function loadStaff(params) {
  const data = await api("/api/dashboard/staff", params);
  const rows = data.rows.map((r) => el("tr", {}, el("td", {}, r.who), el("td", {}, r.kind),
    el("td", {}, String(r.taken)), el("td", {}, String(r.replied)), el("td", {}, String(r.resolved)),
    el("td", {}, fmtDuration(r.first_response_p50_s)), el("td", {}, fmtDuration(r.resolution_p50_s)),
    el("td", {}, r.csat === null ? "–" : `${r.csat} (${r.csat_count})`)));
  $("#staff-table tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "8" }, "No escalations in this period."))]));
}

async function loadPlaybooks(params) {
  const data = await api("/api/dashboard/playbooks", params);
  const cols = ["scheduled", "sent", "delivered", "skipped", "cancelled", "replied", "opted_out", "ordered", "stage_moved"];
  const rows = data.steps.map((r) => el("tr", {}, el("td", {}, r.playbook), el("td", {}, String(r.step)),
    el("td", {}, r.kind), ...cols.map((c) => el("td", {}, String(r[c]))), el("td", {}, r.top_reason || "–")));
  $("#playbooks-table tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: "13" }, "No playbook steps fired in this period."))]));
}

const num = (v, unit = "") => (v === null || v === undefined ? "–" : `${v}${unit}`);

async function loadKpis(params) {
  const data = await api("/api/dashboard/kpis", params);
  const s = data.store;
  const tile = (label, value, id) => el("div", { class: "kpi", id }, el("strong", {}, value), el("span", {}, label));
  $("#kpi-store").replaceChildren(
    tile("retention", pct(s.retention_rate), "kpi-retention"), tile("churn", pct(s.churn_rate), "kpi-churn"),
    tile("repeat purchase", pct(s.repeat_purchase_rate), "kpi-repeat"),
    tile("avg. lifetime value", num(s.average_lifetime_value), "kpi-clv"),
    tile(`NPS (${s.nps_answers})`, num(s.nps), "kpi-nps"), tile(`CSAT (${s.csat_answers})`, num(s.csat, "/5"), "kpi-csat"));
  const stageRows = data.by_stage.map((r) => el("tr", {}, el("td", {}, r.stage), el("td", {}, String(r.customers)),
    el("td", {}, String(r.buyers)), el("td", {}, pct(r.retention_rate)), el("td", {}, pct(r.churn_rate)),
    el("td", {}, pct(r.repeat_purchase_rate)), el("td", {}, num(r.average_lifetime_value)),
    el("td", {}, num(r.nps)), el("td", {}, num(r.csat, "/5"))));
  $("#kpi-stage-table tbody").replaceChildren(...(stageRows.length ? stageRows : [el("tr", {}, el("td", { colspan: "9" }, "No customers yet."))]));
  const cohortRows = data.by_cohort.map((r) => el("tr", {}, el("td", {}, r.cohort), el("td", {}, String(r.buyers)),
    el("td", {}, pct(r.repeat_purchase_rate)), el("td", {}, num(r.average_lifetime_value)),
    el("td", { class: "cohort" }, r.monthly_retention.map(pct).join(" · "))));
  $("#kpi-cohort-table tbody").replaceChildren(...(cohortRows.length ? cohortRows : [el("tr", {}, el("td", { colspan: "5" }, "No orders yet."))]));
}

function csvLinks(params) {
  const paths = { stages: "/api/dashboard/stages", flow: "/api/dashboard/flow",
    performance: "/api/dashboard/performance", faq: "/api/dashboard/faq", conversations: "/api/conversations",
    staff: "/api/dashboard/staff", kpis: "/api/dashboard/kpis",
    playbooks: "/api/dashboard/playbooks" };
  document.querySelectorAll("a.csv").forEach((a) => {
    const q = a.dataset.csv === "conversations" ? conversationParams(params) : new URLSearchParams(params);
    if (a.dataset.csv === "performance") q.set("by", document.querySelector("input[name=by]:checked").value);
    q.set("format", "csv");
    a.href = `${paths[a.dataset.csv]}?${q}`;
  });
}

async function run(...loaders) {
  const params = periodParams();
  state.loading += 1;
  document.body.dataset.loaded = "0";
  $("#status").textContent = "";
  try {
    await Promise.all(loaders.map((load) => load(new URLSearchParams(params))));
  } catch (err) {
    $("#status").textContent = `Could not load: ${err.message}`;
  } finally {
    state.loading -= 1;
    csvLinks(params);
    if (state.loading === 0) document.body.dataset.loaded = "1";
  }
}

const ALL = [loadStages, loadFlow, loadPerformance, loadFaq, loadStaff, loadKpis, loadPlaybooks,
  () => loadWaiting(),
  (p) => loadConversations(p)];

document.addEventListener("DOMContentLoaded", () => {
  const stageSelect = $("#filters select[name=stage]");
  for (const s of STAGES) stageSelect.append(el("option", {}, s));
  $("#period-form").addEventListener("change", (ev) => {
    const custom = $("#period-form").querySelector("input[name=period]:checked").value === "custom";
    $("#custom-range").hidden = !custom;
    if (ev.target.name === "period" && !custom) run(...ALL);
  });
  $("#period-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(...ALL); });
  document.querySelectorAll("input[name=by]").forEach((i) => i.addEventListener("change", () => run(loadPerformance)));
  $("#filters").addEventListener("change", () => run((p) => loadConversations(p)));
  $("#more").addEventListener("click", () => run((p) => loadConversations(p, true)));
  run(...ALL);
  setInterval(() => loadWaiting().catch(() => {}), 15000);
});

// The demo page: reads /api/info and /api/cases, posts questions to /api/ask, renders the answers.
// All text from the server goes in through textContent, never as HTML.
"use strict";

const $ = (selector) => document.querySelector(selector);

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const ms = (value) => (value === null || value === undefined ? "n/a" : `${value.toFixed(1)} ms`);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new Error(`${url}: HTTP ${response.status} (no JSON)`);
  }
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

function showMessage(text) {
  const message = $("#message");
  message.textContent = text || "";
  message.hidden = !text;
}

function resultsTable(execution) {
  const table = el("table", "results");
  const shown = execution.rows.length;
  table.append(el("caption", null, rowsText(execution) + (shown < execution.row_count ? `, first ${shown} shown` : "")));
  const head = el("tr");
  for (const column of execution.columns) head.append(el("th", null, column));
  table.append(el("thead", null, head));
  const body = el("tbody");
  for (const row of execution.rows) {
    const tr = el("tr");
    for (const value of row) tr.append(el("td", value === null ? "null" : null, value === null ? "NULL" : String(value)));
    body.append(tr);
  }
  table.append(body);
  return el("div", "table-wrap", table);
}

function errorPanel(title, detail) {
  return el("div", "error-panel", el("strong", null, title), el("p", null, detail));
}

function matchBadges(match) {
  const box = el("div", "match");
  const verdicts = [["exact", "exact"], ["logic_form", "logic form"], ["execution", "execution (suite)"]];
  for (const [key, label] of verdicts) {
    const value = match[key];
    const state = value === true ? "yes" : value === false ? "no" : "na";
    const mark = value === true ? "✓" : value === false ? "✗" : "–";
    const badge = el("span", `badge ${state}`, `${mark} ${label}`);
    badge.title = value === null ? "not checked (see the note at the bottom)" : `${label}: ${value ? "matches" : "differs from"} the gold SQL`;
    box.append(badge);
  }
  return box;
}

const TITLES = { champion: "Champion", retrieval: "Retrieval baseline", baseline: "Zero-shot baseline" };
const NO_READING = "This SQL is outside the dataset's grammar: no plain-English reading, check it with care.";

// One hidden panel per role the server lists, in its order (champion first).
function makePanels(roles) {
  $("#answers").replaceChildren(...roles.map((role) => {
    const panel = el("article", "panel");
    panel.id = `panel-${role}`;
    panel.hidden = true;
    return panel;
  }));
}

// How far to trust the answer: its confidence, an uncertain mark, why it is not grounded, how it was mended.
function trust(answer) {
  const box = el("div", "trust");
  const badge = el("span", "confidence", `confidence ${answer.confidence.toFixed(2)}`);
  badge.classList.add(answer.uncertain ? "low" : "high");
  badge.dataset.confidence = String(answer.confidence);
  badge.title = answer.calibrated
    ? "estimated probability that this SQL is right (calibrated on held-out questions)"
    : "a rough score, not calibrated on held-out questions";
  box.append(badge);
  if (answer.uncertain) box.append(el("strong", "uncertain", "Uncertain — check before use"));
  if (answer.grounded === false) {
    const problems = el("div", "problems", el("strong", null, "Not grounded in the database:"));
    const list = el("ul");
    for (const problem of answer.problems.length ? answer.problems : ["no candidate qualified"]) list.append(el("li", null, problem));
    problems.append(list);
    box.append(problems);
  }
  if (answer.mended && answer.mended.length) {
    const mended = el("div", "mended", el("strong", null, "Mended from the model's own candidate:"));
    const list = el("ul");
    for (const change of answer.mended) list.append(el("li", null, change));
    mended.append(list);
    box.append(mended);
  }
  return box;
}

// The next candidates of an uncertain answer: each one's reading, confidence and SQL.
function candidates(answer) {
  const box = el("div", "alternatives", el("h3", null, "Next candidates"));
  for (const alternative of answer.alternatives) {
    const item = el("div", "candidate");
    item.append(el("p", "candidate-reading", alternative.explanation || NO_READING,
      " ", el("span", "meta", `confidence ${alternative.confidence.toFixed(2)}`)));
    item.append(el("pre", "candidate-sql", alternative.pretty));
    box.append(item);
  }
  return box;
}

function renderPanel(answer) {
  const panel = $(`#panel-${answer.role}`);
  panel.replaceChildren();
  panel.classList.toggle("is-uncertain", answer.uncertain === true);
  const title = TITLES[answer.role] || answer.role;
  panel.append(el("h2", null, title, " ", el("span", "meta", answer.model || "unavailable")));

  const timings = el("div", "timings");
  timings.append(el("span", null, `generation ${ms(answer.generation_ms)}`));
  if (answer.batch_size > 1) timings.append(el("span", null, `shared with ${answer.batch_size - 1} other question${answer.batch_size === 2 ? "" : "s"}`));
  if (answer.queued_ms) timings.append(el("span", null, `waited ${ms(answer.queued_ms)}`));
  if (answer.execution) {
    timings.append(el("span", null, `execution ${ms(answer.execution.elapsed_ms)}`));
    if (answer.execution.ok) timings.append(el("span", null, rowsText(answer.execution)));
  }
  panel.append(timings);
  if (answer.match) panel.append(matchBadges(answer.match));
  if (answer.sql !== null) {
    panel.append(el("p", "explanation", answer.explanation || NO_READING));
    if (answer.confidence !== null) panel.append(trust(answer));
  }
  if (answer.pretty !== null) panel.append(el("pre", "sql", answer.pretty));

  if (answer.error) {
    panel.append(errorPanel("Model error", answer.error));
  } else if (answer.execution && !answer.execution.ok) {
    const kind = answer.execution.error_kind ? ` (${answer.execution.error_kind})` : "";
    panel.append(errorPanel(`Query not run${kind}`, answer.execution.error || "unknown error"));
  } else if (answer.execution) {
    panel.append(resultsTable(answer.execution));
  }
  if (answer.uncertain && answer.alternatives.length) panel.append(candidates(answer));
  panel.hidden = false;
}

function rowsText(execution) {
  return `${execution.row_count}${execution.truncated ? "+" : ""} row${execution.row_count === 1 ? "" : "s"}`;
}

function resultSummary(execution) {
  if (!execution.ok) return `does not run here: ${execution.error}`;
  if (execution.row_count === 1 && execution.columns.length === 1) return `result ${execution.rows[0][0]}`;
  return rowsText(execution);
}

function renderGold(gold) {
  const section = $("#gold");
  if (!gold) {
    section.hidden = true;
    return;
  }
  const parts = ["from the dataset", gold.variant, gold.key, resultSummary(gold.execution)];
  $("#gold-meta").textContent = parts.filter(Boolean).join(" · ");
  $("#gold-explanation").textContent = gold.explanation || "";
  $("#gold-sql").textContent = gold.pretty;
  section.hidden = false;
}

async function ask(question) {
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Asking…";
  document.body.dataset.state = "loading";
  showMessage("");
  try {
    const result = await getJSON("/api/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ question }),
    });
    renderGold(result.gold);
    for (const answer of result.answers) renderPanel(answer);
    document.body.dataset.state = "answered";
  } catch (error) {
    showMessage(error.message);
    document.body.dataset.state = "refused";
  } finally {
    button.disabled = false;
    button.textContent = "Ask";
  }
}

function updateCount() {
  $("#count").textContent = $("#question").value.length;
}

async function init() {
  const input = $("#question");
  input.addEventListener("input", updateCount);
  $("#ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    ask(input.value);
  });
  try {
    const [info, cases] = await Promise.all([getJSON("/api/info"), getJSON("/api/cases")]);
    $("#limit").textContent = info.max_question_chars;
    makePanels(info.roles);
    $("#models").textContent = [
      ...info.roles.map((role) => `${(TITLES[role] || role).toLowerCase()}: ${info.models[role] || "unavailable"}`),
      `database: ${info.database}`,
    ].join(" · ");
    $("#notes").replaceChildren(...info.notes.map((note) => el("p", null, note)));
    for (const item of cases.cases) {
      const button = el("button", `case ${item.source}`, item.label);
      button.type = "button";
      button.title = item.question;
      button.addEventListener("click", () => {
        input.value = item.question;
        updateCount();
        ask(item.question);
      });
      $("#cases").append(button);
    }
    document.body.dataset.state = "ready";
  } catch (error) {
    showMessage(`Could not reach the demo API: ${error.message}`);
    document.body.dataset.state = "refused";
  }
}

document.addEventListener("DOMContentLoaded", init);

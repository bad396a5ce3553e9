"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

function element(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;  // text only: never parsed as HTML
  return node;
}

function showModes(modes, chosen) {
  const box = $("modes");
  box.replaceChildren();
  for (const mode of modes) {
    const label = element("label");
    const input = element("input");
    Object.assign(input, { type: "radio", name: "mode", value: mode, checked: mode === chosen });
    label.append(input, " " + mode);
    box.append(label);
  }
}

function showHits(reply) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of reply.hits) {
    const item = element("li", "hit");
    item.append(element("div", "title", hit.title || hit.id));
    item.append(element("div", "meta", `${hit.id} · score ${hit.score.toFixed(4)}`));
    item.append(element("div", "snippet", hit.snippet));
    list.append(item);
  }
  const rerank = reply.rerank_k ? `, top ${reply.rerank_k} reranked` : "";
  $("status").className = "";
  $("status").textContent =
    `${reply.hits.length} hits · ${reply.mode}${rerank} · ${reply.took_ms.toFixed(1)} ms`;
}

function showError(text) {
  $("results").replaceChildren();
  $("status").className = "error";
  $("status").textContent = text;
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("q").value.trim();
  if (!query) { showError("Type a query first."); return; }
  const mode = document.querySelector("input[name=mode]:checked");
  const body = { query, k: Number($("k").value) };
  if (mode) body.mode = mode.value;
  if (info && info.ranker) body.rerank_k = $("rerank").checked ? (info.default_rerank_k || 20) : 0;
  $("status").className = "";
  $("status").textContent = "searching…";
  try {
    const reply = await fetch("search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await reply.json();
    if (!reply.ok) {
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
      showError(`Error ${reply.status}: ${detail}`);
      return;
    }
    showHits(data);
    history.replaceState(null, "", "?q=" + encodeURIComponent(query));
  } catch (err) {
    showError("The server did not answer: " + err);
  }
}

async function start() {
  $("form").addEventListener("submit", search);
  try {
    info = await (await fetch("info")).json();
    showModes(info.modes, info.default_mode);
    $("rerank-label").hidden = !info.ranker;
    $("about").textContent = `${info.documents} documents`;
    $("q").maxLength = info.limits.max_query_chars;
    for (const option of [...$("k").options]) {
      if (Number(option.value) > info.limits.max_k) option.remove();
    }
    if (!$("k").options.length) $("k").append(new Option(String(info.limits.max_k)));
  } catch (err) {
    showError("Could not read /info: " + err);
  }
  const q = new URLSearchParams(location.search).get("q");
  if (q) { $("q").value = q; search(); }
}
start();

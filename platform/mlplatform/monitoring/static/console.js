// mlsuite console page: polls /api/overview every few seconds and redraws tables and plots.
// No build step: plain ES2017 and uPlot (served from this package, never from the internet).
"use strict";
(function () {
  const interval = Math.max(1000, 1000 * parseFloat(document.body.dataset.interval || "3"));
  const plots = {};
  const state = { updates: 0, failures: 0, paused: false, plots: plots, last: null };
  window.mlsuiteConsole = state;
  // Plot data lengths, read by the page test: {plot name: points on its x axis}.
  state.lengths = () => Object.fromEntries(Object.entries(plots).map(([k, p]) => [k, p.data[0].length]));
  state.filled = () => Object.fromEntries(Object.entries(plots).map(
    ([k, p]) => [k, p.data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null && v !== undefined).length, 0)]));

  const esc = (v) => String(v === null || v === undefined ? "–" : v).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (v, d = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
  const pct = (v, d = 1) => (v === null || v === undefined) ? "–" : (100 * v).toFixed(d) + "%";
  const ms = (v) => (v === null || v === undefined) ? "–" : (1000 * v).toFixed(1) + " ms";
  const mb = (v) => (v === null || v === undefined) ? "–" : (v / 1048576).toFixed(0) + " MB";
  const scale = (arr, f) => arr.map((v) => (v === null || v === undefined) ? null : v * f);

  function table(caption, head, rows, rowClass) {
    const th = head.map((h) => `<th scope="col">${esc(h)}</th>`).join("");
    const body = rows.length ? rows.map((r, i) =>
      `<tr class="${rowClass ? rowClass(i) : ""}">` + r.map((c, j) =>
        j === 0 ? `<th scope="row">${c}</th>` : `<td>${c}</td>`).join("") + "</tr>").join("")
      : `<tr><td colspan="${head.length}" class="muted">nothing yet</td></tr>`;
    return `<table><caption>${esc(caption)}</caption><thead><tr>${th}</tr></thead><tbody>${body}</tbody></table>`;
  }

  function plot(name, series, data, opts = {}) {
    const el = document.querySelector(`[data-plot="${name}"]`);
    if (!el) return;
    if (!plots[name]) {
      plots[name] = new uPlot({
        // The legend (two series or more) goes under the canvas, inside the figure: only
        // the names (live values would jump as the cursor moves).
        width: el.clientWidth || 280, height: 136,
        legend: { show: series.length > 1, live: false }, cursor: { show: true },
        scales: { x: { time: opts.time !== false } },
        // Bars over buckets: the x axis names each bucket's upper bound, not its index.
        axes: [opts.xValues ? { size: 30, values: opts.xValues, incrs: [1, 2, 3, 4], space: 34 } : { size: 30 },
               { size: 52 }],
        series: [{}].concat(series.map((s, i) => Object.assign(
          { label: s.label, stroke: s.stroke || ["#0969da", "#cf222e", "#1a7f37"][i], width: 1.5,
            spanGaps: false }, s.extra || {}))),
      }, data, el);
    } else {
      plots[name].setData(data);
    }
  }

  // One line per alert, except that drifted features of a service share one line (the
  // names listed under it): twenty drifted features should not push everything off screen.
  function renderAlerts(a) {
    const el = document.getElementById("alert-list");
    const lines = [];
    const drift = {};
    for (const x of a.firing) {
      if (x.name === "FeatureDrift") (drift[x.labels.service] = drift[x.labels.service] || []).push(x);
      else lines.push(`<div class="alert ${esc(x.severity)}"><strong>${esc(x.name)}</strong> ` +
        `<span class="muted">(${esc(x.severity)})</span>: ${esc(x.summary)}</div>`);
    }
    for (const [svc, xs] of Object.entries(drift)) {
      const names = xs.map((x) => x.labels.feature);
      lines.push(`<div class="alert warning"><strong>FeatureDrift</strong> <span class="muted">(warning)</span>: ` +
        `${esc(svc)}: ${names.length} input feature${names.length > 1 ? "s" : ""} drifted: ` +
        `${esc(names.slice(0, 6).join(", "))}${names.length > 6 ? ", …" : ""}` +
        (names.length > 6 ? `<details><summary>all ${names.length}</summary>${esc(names.join(", "))}</details>` : "") +
        "</div>");
    }
    const html = lines.length ? lines.join("") : "<p>No alert firing.</p>";
    if (el.dataset.html !== html) { el.innerHTML = html; el.dataset.html = html; }  // aria-live: changes only
  }

  function renderServices(services, redis) {
    for (const [name, s] of Object.entries(services)) {
      const card = document.getElementById(`svc-${name}`);
      if (!card) continue;
      const badge = card.querySelector('[data-role="state"]');
      badge.textContent = s.up === null ? "?" : s.up ? "up" : "down";
      badge.className = "badge " + (s.up ? "up" : s.up === false ? "down" : "");
      badge.title = s.error || s.url;
      const f = s.summary;
      card.querySelector('[data-role="figures"]').innerHTML = !s.up
        ? `<td colspan="6" class="flag">down: ${esc(s.error || "no answer")}</td>`
        : f ? [num(f.rps, 1), ms(f.p50), ms(f.p99), pct(f.error_rate), num(f.cpu_percent, 1) + "%",
            mb(f.memory_bytes)].map((v) => `<td>${v}</td>`).join("")
          : '<td colspan="6">waiting for two scrapes</td>';
      const t = s.series.t;
      plot(`${name}:rps`, [{ label: "req/s" }], [t, s.series.rps]);
      plot(`${name}:latency`, [{ label: "p50" }, { label: "p99" }],
        [t, scale(s.series.p50, 1000), scale(s.series.p99, 1000)]);
      plot(`${name}:error_rate`, [{ label: "5xx %" }], [t, scale(s.series.error_rate, 100)]);
      plot(`${name}:cpu_percent`, [{ label: "CPU %" }], [t, s.series.cpu_percent]);
      plot(`${name}:memory`, [{ label: "MB" }], [t, scale(s.series.memory_bytes, 1 / 1048576)]);
    }
    document.getElementById("redis-state").textContent = redis.up === null ? "Redis: not configured"
      : redis.up ? `Redis: up, ${mb(redis.used_memory_bytes)} used` +
        (redis.memory_limit_bytes ? ` of ${mb(redis.memory_limit_bytes)}` : "") : `Redis: DOWN (${redis.detail})`;
  }

  function renderModels(models, rollouts) {
    const served = Object.entries(models.served).map(([svc, m]) => [esc(svc),
      m.up ? "up" : `<span class="flag">down</span>`, esc(m.model_version || m.model), esc(m.alias),
      esc(m.created_at), esc(m.labels_learned), esc(m.rollout ? m.rollout.state : "")]);
    const reg = Object.entries(models.registered).map(([n, r]) => [esc(n), esc(r.versions),
      esc(Object.entries(r.aliases).map(([a, v]) => `${a}=v${v}`).join(", "))]);
    document.getElementById("model-table").innerHTML =
      table("Served models", ["service", "state", "model", "alias", "created", "labels learned", "rollout"], served) +
      table("Registry", ["model", "versions", "aliases"], reg);
    let html;
    if (!rollouts.available) html = `<p class="muted">rollouts: ${esc(rollouts.reason)}</p>`;
    else {
      const items = Object.entries(rollouts.items);
      html = table("Rollouts", ["model", "state", "strategy", "version", "previous", "share", "step"],
        items.map(([n, r]) => [esc(n), esc(r.state) + (r.active ? " (running)" : ""), esc(r.strategy),
          esc(r.version), esc(r.previous), pct(r.share, 0), `${esc(r.step)}/${esc((r.steps || []).length)}`]));
      for (const [n, r] of items) {
        const hist = (r.history || []).slice(-20).reverse().map((h) => [esc(h.at || h.time || ""),
          esc(h.from || ""), esc(h.to || h.state || ""), esc(h.event || ""), esc(h.reason || "")]);
        html += `<details><summary>${esc(n)}: transition history (${(r.history || []).length})</summary>` +
          table(`${n} transitions, newest first`, ["at", "from", "to", "event", "reason"], hist) + "</details>";
      }
    }
    document.getElementById("rollout-table").innerHTML = html;
  }

  function renderExperiments(ex) {
    let html = ex.available ? "" : `<p class="muted">experiments: ${esc(ex.reason)}</p>`;
    for (const [name, r] of Object.entries(ex.items || {})) {
      const rows = Object.entries(r.variants).map(([v, x]) => [esc(v) + (v === r.control ? " (control)" : ""),
        esc(x.users), esc(x.exposures), esc(x.conversions), pct(x.conversion_rate, 2),
        x.lift === null ? "–" : pct(x.lift), x.lift_ci95 ? `[${pct(x.lift_ci95[0])}, ${pct(x.lift_ci95[1])}]` : "–",
        esc(x.p_value), num(x.revenue, 2)]);
      html += table(`${name}: conversion lift vs ${r.control} (95% interval)` + (r.srm.mismatch ? " — SAMPLE RATIO MISMATCH" : ""),
        ["variant", "users", "exposures", "conversions", "conversion", "lift", "95% interval", "p-value", "revenue"], rows);
    }
    const att = Object.entries(ex.attributed || {});
    if (att.length) html += table("Attributed to recommendations", ["variant", "conversions", "revenue"],
      att.map(([v, x]) => [esc(v), num(x.conversions, 0), num(x.revenue, 2)]));
    document.getElementById("experiment-tables").innerHTML = html;
  }

  function renderFraud(f) {
    const el = document.getElementById("fraud-tables");
    if (!f.up) { el.innerHTML = '<p class="flag">fraud service down or not scraped yet</p>'; return; }
    const sc = f.scores;
    const xs = sc.counts.map((_, i) => i);
    plot("fraud:scores", [{ label: "scores", extra: { paths: uPlot.paths.bars({ size: [0.8] }), fill: "#0969da55" } }],
      [xs, sc.counts], { time: false, xValues: (u, splits) => splits.map((i) =>
        Number.isInteger(i) && i < sc.le.length ? (sc.le[i] === null ? "1" : "≤" + sc.le[i]) : "") });
    document.getElementById("scores-caption").textContent = `score distribution (${sc.span}; buckets up to ` +
      sc.le.map((v) => v === null ? "+Inf" : v).join(", ") + ")";
    plot("fraud:decisions", [{ label: "per min" }], [f.decisions_series.t, f.decisions_series.per_minute]);
    const dec = Object.entries(f.decisions_per_minute).map(([d, v]) => [esc(d), num(v, 1), esc(f.decisions_total[d])]);
    const lag = f.label_lag_seconds;
    const q = f.online;
    const biz = Object.entries(f.business || {}).map(([v, b]) => [esc(v), num(b.loss_prevented), num(b.loss), num(b.false_declines)]);
    el.innerHTML = table("Decisions", ["decision", "per minute", "total"], dec) +
      table("Online quality as labels arrive", ["metric", "value"], [["precision", num(q.precision, 3)],
        ["recall", num(q.recall, 3)], ["ROC AUC", num(q.roc_auc, 3)], ["labels learned", esc(f.labels_learned)]]) +
      table("Labels and review queue", ["measure", "value"], [["label lag p50", lag.p50 === null ? "–" : num(lag.p50 / 3600, 1) + " h"],
        ["label lag p90", lag.p90 === null ? "–" : num(lag.p90 / 3600, 1) + " h"], ["labels timed", esc(lag.count)],
        ["review queue open", esc(f.reviews.open)], ["review queue overdue", esc(f.reviews.overdue)]]) +
      table("Business amounts per model version", ["model version", "loss prevented", "fraud loss", "false declines"], biz);
  }

  function renderDrift(drift) {
    let html = "";
    for (const [svc, d] of Object.entries(drift)) {
      if (!d.available) { html += `<p class="muted">${esc(svc)}: ${esc(d.reason)}</p>`; continue; }
      const rows = d.features.map((x) => [esc(x.name) + (x.drifted ? ' <span class="flag">DRIFTED</span>' : ""),
        esc(x.kind), esc(x.statistic), num(x.value, 4), num(x.threshold, 3),
        x.drifted ? "yes" : x.not_judged ? `<span title="${esc(x.not_judged)}">not judged</span>` : "no"]);
      html += table(`${svc}: ${d.model}, ${d.rows} live rows over ${d.window}; drift share ${pct(d.drift_share)}` +
        (d.enough_data ? "" : " (too few rows to flag)"),
        ["feature", "kind", "statistic", "value", "threshold", "drifted"], rows,
        (i) => d.features[i].drifted ? "drifted" : "");
    }
    document.getElementById("drift-tables").innerHTML = html || "<p>drift: not available yet</p>";
  }

  async function refresh() {
    if (state.paused) return;
    try {
      const reply = await fetch("api/overview", { cache: "no-store" });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      const o = await reply.json();
      state.last = o;
      renderAlerts(o.alerts);
      renderServices(o.services, o.redis);
      renderModels(o.models, o.rollouts);
      renderExperiments(o.experiments);
      renderFraud(o.fraud);
      renderDrift(o.drift);
      state.updates += 1;
      document.getElementById("updated").textContent = "updated " + new Date(o.at * 1000).toLocaleTimeString();
    } catch (err) {
      state.failures += 1;
      document.getElementById("updated").textContent = "update failed: " + err.message;
    }
  }

  document.getElementById("pause").addEventListener("click", (e) => {
    state.paused = !state.paused;
    e.target.setAttribute("aria-pressed", String(state.paused));
    e.target.textContent = state.paused ? "Resume updates" : "Pause updates";
    if (!state.paused) refresh();
  });
  refresh();
  setInterval(refresh, interval);
})();

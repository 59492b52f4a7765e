// Experiments (docs/registry.md, "Experiments"): the list, and one experiment with its variants
// side by side (rates with their 95% intervals), the tests and the verdict. Publishers get
// Promote and Stop (POST /v1/experiments/{id}/promote|stop) while it runs.

import { h, fill, badge, table } from "../dom.js";
import { api, can, get } from "../api.js";
import { onChange } from "../live.js";

function percent(rate) {
  if (!rate || rate.value === null || rate.value === undefined) return "-";
  const [low, high] = rate.ci95 || [];
  const p = (v) => `${(100 * v).toFixed(1)}%`;
  return low === null || low === undefined ? p(rate.value) : `${p(rate.value)} (${p(low)}-${p(high)})`;
}

function number(value) {
  return value === null || value === undefined ? "-" : String(+Number(value).toPrecision(4));
}

function variantsTable(variants) {
  const rows = [
    ["Role", (v) => v.role], ["Version", (v) => v.version], ["Devices", (v) => v.devices],
    ["Requests", (v) => v.requests], ["Answered in the experiment", (v) => v.answered],
    ["5xx (95% CI)", (v) => percent(v.server_error_rate)],
    ["p50 ms", (v) => number(v.latency_ms.p50)], ["p99 ms", (v) => number(v.latency_ms.p99)],
    ["Accuracy (95% CI)", (v) => percent(v.accuracy)], ["Labelled", (v) => v.accuracy.n],
    ["MAE", (v) => number(v.mean_abs_error)], ["Agreement (95% CI)", (v) => percent(v.agreement)],
  ];
  return table(["", ...variants.map((v) => `${v.role} v${v.version}`)],
    rows.map(([label, cell]) => h("tr", {}, h("th", {}, label), variants.map((v) => h("td", {}, cell(v))))),
    { class: "grid", id: "variants" });
}

function detailView(e, report, reload) {
  const v = e.verdict;
  const actions = can("publisher") && e.status === "running"
    ? h("div", { class: "toolbar", id: "experiment-actions" }, ["promote", "stop"].map((action) =>
      h("button", { type: "button", class: action === "stop" ? "danger" : "", dataset: { action },
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await api("POST", `/v1/experiments/${e.id}/${action}`);
            report(`Experiment ${e.id}: ${action} done.`);
          } catch (err) {
            report(err.message, true);
          }
          reload();
        } }, action[0].toUpperCase() + action.slice(1))))
    : null;
  return [
    h("h1", {}, `Experiment #${e.id}: ${e.name}`),
    h("p", {}, `${e.model}: ${e.mode}, control v${e.control}, `,
      e.mode === "split" ? `treatment v${e.treatment} on ${e.split}%` : `shadow v${e.shadow}`,
      ` · ${e.devices.length} device(s) · `, badge(e.status), e.outcome ? ` · ${e.outcome}` : ""),
    actions,
    h("p", { class: "card", id: "verdict" }, v.sentence),
    h("section", { class: "card" }, h("h2", {}, "Variants"), variantsTable(v.variants)),
    h("section", { class: "card" }, h("h2", {}, "Tests"),
      table(["Metric", "Test", "z", "p", "Significant", "Better"], v.tests.map((t) =>
        h("tr", {}, h("td", {}, t.metric), h("td", {}, t.test), h("td", {}, number(t.z)), h("td", {}, number(t.p_value)),
          h("td", {}, t.significant ? "yes" : "no"), h("td", {}, t.better ? `v${t.better}` : "-"))), { class: "grid" }),
      h("p", {}, v.needed_per_variant === null ? "" : `labelled answers still needed per variant: ${v.needed_per_variant}`)),
  ];
}

export function render(main, [id]) {
  const body = h("div");
  const error = h("p", { class: "error" });
  const notice = h("p", { class: "notice" });
  const report = (text, failed = false) => { notice.textContent = text; notice.classList.toggle("error", failed); };
  fill(main, id ? h("p", {}, h("a", { href: "#/experiments" }, "‹ Experiments")) : null, error, notice, body);
  async function load() {
    try {
      if (id) {
        fill(body, detailView(await get(`/v1/experiments/${encodeURIComponent(id)}`), report, load));
      } else {
        const { experiments } = await get("/v1/experiments");
        fill(body, h("h1", {}, "Experiments"), experiments.length ? table(
          ["Experiment", "Model", "Mode", "Control", "Candidate", "Devices", "Status", "Outcome"],
          experiments.map((e) => h("tr", {}, h("td", {}, h("a", { href: `#/experiments/${e.id}` }, `#${e.id} ${e.name}`)),
            h("td", {}, e.model), h("td", {}, e.mode), h("td", {}, `v${e.control}`),
            h("td", {}, e.mode === "split" ? `v${e.treatment} (${e.split}%)` : `v${e.shadow} (shadow)`),
            h("td", {}, e.devices.length), h("td", {}, badge(e.status)), h("td", { class: "detail" }, e.outcome || ""))),
          { class: "grid", id: "experiments" }) : h("p", {}, "No experiments yet: model-registry experiment start"));
      }
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["fleet", "deployments", "rollouts"], load);
}

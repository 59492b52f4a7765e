// Drift (docs/registry.md, "Drift"): per model, every feature's PSI and largest CDF gap against
// the release's profile, per device and fleet-wide, worst first (GET /v1/models/{name}/drift).

import { h, fill, badge, table } from "../dom.js";
import { get } from "../api.js";
import { onChange } from "../live.js";

const STATUS_KIND = { ok: "passed", warn: "pending", alert: "failed", insufficient: "" };

function number(value) {
  return value === null || value === undefined ? "-" : String(+Number(value).toPrecision(4));
}

export function render(main, [selected]) {
  const list = h("aside", { class: "side" });
  const detail = h("div", { class: "content" });
  const error = h("p", { class: "error" });
  fill(main, error, h("section", { class: "with-side" }, list, detail));
  async function load() {
    try {
      const { models } = await get("/v1/models");
      const name = selected || (models[0] && models[0].name);
      fill(list, h("h2", {}, "Models"), h("ul", { class: "groups" }, models.map((m) =>
        h("li", {}, h("a", { href: `#/drift/${encodeURIComponent(m.name)}`, class: m.name === name ? "active" : "" },
          h("span", { class: "group-name" }, m.name))))));
      if (!name) { fill(detail, h("h1", {}, "Drift"), h("p", {}, "No models yet.")); return; }
      const drift = await get(`/v1/models/${encodeURIComponent(name)}/drift`);
      const l = drift.limits;
      fill(detail, h("h1", {}, `Drift of ${name}`),
        h("p", { class: "summary" }, `window ${drift.since} to ${drift.until}; warn at PSI ${l.warn_psi}, alert at ${l.alert_psi}, at least ${l.min_samples} samples`),
        drift.features.length ? table(["Feature", "Version", "Device", "PSI", "Max CDF gap", "Samples", "Status"],
          drift.features.map((f) => h("tr", { dataset: { status: f.status } },
            h("td", {}, f.feature), h("td", {}, f.version), h("td", {}, f.device_id ?? `fleet (${f.devices} devices)`),
            h("td", {}, number(f.psi)), h("td", {}, number(f.max_cdf_gap)), h("td", {}, f.samples),
            h("td", {}, badge(f.status, STATUS_KIND[f.status] ?? f.status)))), { class: "grid", id: "drift" })
          : h("p", {}, "No binned telemetry in this window (the release needs a profile: push with --eval)."),
        h("h2", {}, "Status changes"),
        table(["At", "Kind", "Version", "Device", "Feature", "Status", "PSI"], drift.records.map((r) =>
          h("tr", {}, h("td", {}, r.at), h("td", {}, r.kind), h("td", {}, r.version), h("td", {}, r.device_id ?? "fleet"),
            h("td", {}, r.feature), h("td", {}, `${r.previous} → ${r.status}`), h("td", {}, number(r.psi)))), { class: "grid" }));
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["fleet", "models"], load);
}

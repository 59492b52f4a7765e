// Models and their versions with the build report: sizes, fp32 and int8 accuracy (or R²),
// and the verdicts of the accuracy and champion gates (GET /v1/models/{name}/versions).

import { h, fill, bytes, table } from "../dom.js";
import { api, can, get } from "../api.js";
import { onChange } from "../live.js";

function metric(build, kind) {
  const value = build[`accuracy_${kind}`] ?? build[`r2_${kind}`];
  return value === undefined ? "-" : value;
}

function verdict(text) {
  if (!text) return "-";
  const word = String(text).split(/[: ]/)[0];
  return h("span", { class: `verdict verdict-${word.replace(/[^a-z]/g, "")}`, title: String(text) }, String(text));
}

// Publishers deploy a version to a group from here; viewers get no button (and the API would
// answer 403 to them anyway).
function deployCell(release, groups, report) {
  if (!can("publisher")) return null;
  const select = h("select", { class: "deploy-group", "aria-label": "group" },
    groups.map((g) => h("option", { value: g }, g)));
  const button = h("button", { type: "button", class: "deploy" }, "Deploy");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const made = await api("POST", "/v1/deployments",
        { model: release.model, version: release.version, group: select.value });
      report(`Deployment ${made.id}: ${release.model} version ${release.version} to group ${select.value}.`);
    } catch (e) {
      report(e.message, true);
    } finally {
      button.disabled = false;
    }
  });
  return h("td", {}, groups.length ? [select, " ", button] : "no groups");
}

function versionRow(release, groups, report) {
  const b = release.build || {};
  return h("tr", { dataset: { version: String(release.version) } },
    h("td", {}, release.version),
    h("td", { class: "label" }, release.label),
    h("td", {}, bytes(b.fp32_size)),
    h("td", {}, bytes(release.size)),
    h("td", {}, b.size_ratio ?? "-"),
    h("td", {}, b.quantization ?? "-"),
    h("td", {}, metric(b, "fp32")),
    h("td", {}, metric(b, "int8")),
    h("td", {}, b.agreement ?? "-"),
    h("td", {}, verdict(b.accuracy_gate)),
    h("td", {}, verdict(b.champion_gate)),
    h("td", { class: "mono" }, release.sha256.slice(0, 12)),
    h("td", {}, release.created.replace("T", " ").replace("Z", "")),
    deployCell(release, groups, report));
}

export function render(main, [selected]) {
  const list = h("aside", { class: "side" });
  const detail = h("div", { class: "content" });
  const error = h("p", { class: "error" });
  const notice = h("p", { class: "notice", id: "models-notice" });
  const report = (text, failed = false) => {
    notice.textContent = text;
    notice.classList.toggle("error", failed);
  };
  fill(main, error, notice, h("section", { class: "with-side" }, list, detail));

  async function load() {
    try {
      const { models } = await get("/v1/models");
      const name = selected || (models[0] && models[0].name);
      fill(list, h("h2", {}, "Models"), h("ul", { class: "groups" }, models.map((m) =>
        h("li", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}`, class: m.name === name ? "active" : "" },
          h("span", { class: "group-name" }, m.name), " ", h("span", { class: "counts" }, `v${m.latest_version}`))))));
      if (!name) {
        fill(detail, h("h1", {}, "Models"), h("p", {}, "No models yet: push one with model-registry push FILE.onnx --name NAME"));
        return;
      }
      const [{ versions }, fleet] = await Promise.all([
        get(`/v1/models/${encodeURIComponent(name)}/versions`), get("/v1/fleet/devices?limit=1")]);
      const groups = fleet.groups.map((g) => g.group);
      const headers = ["Version", "Label", "FP32 size", "Size", "Ratio", "Quantization", "FP32", "INT8",
        "Agreement", "Accuracy gate", "Champion gate", "sha256", "Created"];
      if (can("publisher")) headers.push("Deploy to");
      fill(detail, h("h1", {}, name), table(headers,
        [...versions].reverse().map((r) => versionRow(r, groups, report)), { class: "grid", id: "versions" }));
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["models"], load);
}

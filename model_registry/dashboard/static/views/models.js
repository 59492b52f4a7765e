// Models and their versions with the build report: sizes, fp32 and int8 accuracy (or R²),
// and the verdicts of the accuracy and champion gates (GET /v1/models/{name}/versions).

import { h, fill, bytes, table } from "../dom.js";
import { get } from "../api.js";
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

function versionRow(release) {
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
    h("td", {}, release.created.replace("T", " ").replace("Z", "")));
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
        h("li", {}, h("a", { href: `#/models/${encodeURIComponent(m.name)}`, class: m.name === name ? "active" : "" },
          h("span", { class: "group-name" }, m.name), " ", h("span", { class: "counts" }, `v${m.latest_version}`))))));
      if (!name) {
        fill(detail, h("h1", {}, "Models"), h("p", {}, "No models yet: push one with model-registry push FILE.onnx --name NAME"));
        return;
      }
      const { versions } = await get(`/v1/models/${encodeURIComponent(name)}/versions`);
      fill(detail, h("h1", {}, name), table(
        ["Version", "Label", "FP32 size", "Size", "Ratio", "Quantization", "FP32", "INT8", "Agreement",
          "Accuracy gate", "Champion gate", "sha256", "Created"],
        [...versions].reverse().map(versionRow), { class: "grid", id: "versions" }));
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["models"], load);
}

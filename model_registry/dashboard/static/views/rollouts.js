// Staged rollouts (docs/registry.md, "Rollouts"): the list, and one rollout with each wave's
// progress, its gates' latest values against their limits, its halt and its decisions.
// Publishers get Pause, Resume and Abort (POST /v1/rollouts/{id}/pause|resume|abort).

import { h, fill, badge, table } from "../dom.js";
import { api, can, get } from "../api.js";
import { onChange } from "../live.js";

const ACTIONS = {  // action -> the states it applies to
  pause: ["running", "waiting"],
  resume: ["paused", "waiting"],
  abort: ["running", "waiting", "paused"],
};

function number(value) {
  if (value === null || value === undefined) return "-";
  return typeof value === "number" ? String(+value.toPrecision(4)) : String(value);
}

function listView(rollouts) {
  if (!rollouts.length) {
    return h("p", {}, "No rollouts yet: model-registry rollout start NAME VERSION --group G");
  }
  return table(["Rollout", "Model", "Version", "Group", "State", "Waves passed", "Devices moved", "Created", "By", "Why it stopped"],
    rollouts.map((r) => h("tr", { dataset: { rollout: String(r.id) } },
      h("td", {}, h("a", { href: `#/rollouts/${r.id}` }, `#${r.id}`)),
      h("td", {}, r.model), h("td", {}, r.version), h("td", {}, r.group),
      h("td", {}, badge(r.state)), h("td", {}, `${r.waves_passed} / ${r.wave}`),
      h("td", {}, r.devices_moved), h("td", {}, r.created.replace("T", " ").replace("Z", "")),
      h("td", {}, r.created_by), h("td", { class: "detail" }, r.halt ? r.halt.reason : ""))),
    { class: "grid", id: "rollouts" });
}

function waveRow(wave) {
  const total = wave.devices.length;
  const others = Object.entries(wave.counts || {})
    .filter(([status, n]) => n && status !== "activated").map(([status, n]) => `${n} ${status}`);
  return h("tr", { dataset: { wave: String(wave.index), state: wave.state } },
    h("td", {}, `wave ${wave.index}`), h("td", {}, `${number(wave.percent)}%`),
    h("td", {}, badge(wave.state)),
    h("td", {}, h("progress", { max: String(Math.max(total, 1)), value: String(wave.activated) })),
    h("td", { class: "wave-count" }, `${wave.activated}/${total} activated`),
    h("td", { class: "detail" }, others.join(", ")));
}

// The newest decision that judged gates: wave_passed (every gate), halted (the one that broke)
// or wave_settled (install and success).
function latestGates(decisions) {
  for (const d of [...decisions].reverse()) {
    const n = d.numbers || {};
    if (Array.isArray(n.gates)) return { at: d.at, gates: n.gates };
    if (n.gate) return { at: d.at, gates: [n] };
    const found = ["success", "install"].map((k) => n[k]).filter(Boolean);
    if (found.length) return { at: d.at, gates: found };
  }
  return null;
}

function gatesView(r) {
  const latest = r.gates && r.gates.length ? { at: "now", gates: r.gates } : latestGates(r.decisions);
  if (!latest) return h("p", {}, "No gate judged yet.");
  return [h("p", { class: "summary" }, latest.at === "now" ? "on the current wave, as the controller judges them now" : `as judged at ${latest.at}`),
    table(["Gate", "Verdict", "Measured", "Limit", "Detail", "Devices"], latest.gates.map((g) =>
      h("tr", { dataset: { gate: String(g.gate) } }, h("td", {}, g.gate),
        h("td", {}, badge(g.held === true ? "held" : g.held === false ? "broken" : "not judged",
          g.held === true ? "passed" : g.held === false ? "failed" : "pending")),
        h("td", {}, number(g.measured)), h("td", {}, number(g.limit)),
        h("td", { class: "detail" }, g.detail || ""),
        h("td", { class: "detail" }, (g.devices || []).join(", ")))),
    { class: "grid", id: "gates" })];
}

function haltView(halt) {
  if (!halt) return null;
  return h("div", { class: "card halt", id: "halt" }, h("h2", {}, `Halted at wave ${halt.wave}: gate ${halt.gate}`),
    h("p", {}, `measured ${number(halt.measured)} against the limit ${number(halt.limit)}`),
    h("p", { class: "detail" }, halt.reason),
    halt.devices && halt.devices.length ? h("p", { class: "detail" }, `devices: ${halt.devices.join(", ")}`) : null);
}

function buttons(rollout, report, reload) {
  if (!can("publisher")) return null;
  return h("div", { class: "toolbar", id: "rollout-actions" }, Object.entries(ACTIONS).map(([action, states]) =>
    h("button", { type: "button", class: action === "abort" ? "danger" : "", dataset: { action },
      disabled: !states.includes(rollout.state),
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          await api("POST", `/v1/rollouts/${rollout.id}/${action}`);
          report(`Rollout ${rollout.id}: ${action} done.`);
        } catch (e) {
          report(e.message, true);
        }
        reload();
      } }, action[0].toUpperCase() + action.slice(1))));
}

function detailView(r, report, reload) {
  return [
    h("h1", { id: "rollout-title" }, `Rollout #${r.id}: ${r.model} version ${r.version} to group ${r.group}`),
    h("p", {}, "state ", h("span", { id: "rollout-state" }, badge(r.state)), ` · ${r.devices_moved} device(s) moved · by ${r.created_by} · ${r.policy ? `soak ${r.policy.soak} s` : ""}`),
    buttons(r, report, reload),
    haltView(r.halt),
    h("section", { class: "card" }, h("h2", {}, "Waves"),
      table(["Wave", "Reach", "State", "Progress", "", "Others"], r.waves.map(waveRow), { class: "grid", id: "waves" })),
    h("section", { class: "card" }, h("h2", {}, "Gates"), gatesView(r)),
    h("section", { class: "card" }, h("h2", {}, "Decisions"),
      table(["At", "Actor", "Action", "Reason"], [...r.decisions].reverse().map((d) =>
        h("tr", {}, h("td", {}, d.at.replace("T", " ").replace("Z", "")), h("td", {}, d.actor),
          h("td", {}, d.action), h("td", { class: "detail" }, d.reason))), { class: "grid", id: "decisions" })),
  ];
}

export function render(main, [id]) {
  const body = h("div");
  const error = h("p", { class: "error" });
  const notice = h("p", { class: "notice", id: "rollout-notice" });
  const report = (text, failed = false) => { notice.textContent = text; notice.classList.toggle("error", failed); };
  fill(main, id ? h("p", {}, h("a", { href: "#/rollouts" }, "‹ Rollouts")) : null, error, notice, body);
  async function load() {
    try {
      if (id) {
        fill(body, detailView(await get(`/v1/rollouts/${encodeURIComponent(id)}`), report, load));
      } else {
        fill(body, h("h1", {}, "Rollouts"), listView((await get("/v1/rollouts")).rollouts));
      }
      error.textContent = "";
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["rollouts", "fleet", "deployments"], load);
}

// One device: what it runs, charts of its requests, errors, latency and resources over a
// window (GET /v1/devices/{id}/history), and its event timeline (GET /v1/devices/{id}).

import { h, fill, ago, badge, bytes, table } from "../dom.js";
import { get } from "../api.js";
import { onChange } from "../live.js";
import { chart } from "../charts.js";

const WINDOWS = ["1h", "6h", "24h", "7d", "30d"];
let windowChoice = "6h";

function header(device) {
  const models = Object.entries(device.models || {}).map(([name, m]) =>
    h("tr", {}, h("td", {}, name), h("td", {}, m.active ?? "-"), h("td", {}, m.assigned ?? "-"),
      h("td", {}, m.phase || "-"), h("td", {}, m.last_error || "-")));
  return h("div", { class: "card" },
    h("h1", { id: "device-title" }, device.device_id),
    h("p", {}, "group ", h("strong", {}, device.group), " · ", badge(device.connection),
      " · last seen ", h("span", { title: device.last_seen || "" }, ago(device.last_seen)),
      " · agent ", device.agent_version || "-"),
    models.length ? table(["Model", "Served", "Assigned", "Phase", "Last error"], models, { class: "grid" }) : null);
}

function timeline(events) {
  const rows = events.map((e) => {
    const b = e.body || {};
    return h("tr", {}, h("td", { title: e.received }, e.received.replace("T", " ").replace("Z", "")),
      h("td", {}, badge(String(b.event || "?"), b.event)), h("td", {}, b.model ?? "-"),
      h("td", {}, b.version ?? "-"), h("td", {}, b.reason ?? ""), h("td", { class: "detail" }, b.detail ?? ""));
  });
  return h("section", { class: "card", id: "timeline" }, h("h2", {}, "Events"),
    rows.length ? table(["Received", "Event", "Model", "Version", "Reason", "Detail"], rows, { class: "grid" })
      : h("p", {}, "No events yet."));
}

function charts(history) {
  const figures = [];
  const span = [history.since, history.until];
  const models = history.models || {};
  for (const [name, points] of Object.entries(models)) {
    const at = points.map((p) => p.at);
    figures.push(chart(`${name}: requests per step`, at, [
      { label: "requests", values: points.map((p) => p.requests) },
      { label: "5xx", values: points.map((p) => p.server_errors) }], { format: (v) => (v ?? "-"), span }));
    figures.push(chart(`${name}: latency`, at, [
      { label: "p50", values: points.map((p) => p.latency_p50_ms) },
      { label: "p99", values: points.map((p) => p.latency_p99_ms) }], { unit: " ms", span }));
  }
  if (!Object.keys(models).length) {
    figures.push(chart("requests per step", [], []));
  }
  const r = history.resources;
  const at = r.map((p) => p.at);
  figures.push(chart("RSS", at, [{ label: "RSS", values: r.map((p) => p.rss_bytes) }], { format: bytes, span }));
  figures.push(chart("CPU", at, [{ label: "CPU", values: r.map((p) => p.cpu_percent) }], { unit: " %", span }));
  figures.push(chart("Disk used", at, [{ label: "disk", values: r.map((p) => p.disk_used_percent) }], { unit: " %", span }));
  return figures;
}

export function render(main, [deviceId]) {
  if (!deviceId) { location.hash = "#/fleet"; return null; }
  const top = h("div");
  const picker = h("div", { class: "toolbar", id: "window" }, "window ",
    WINDOWS.map((w) => h("button", { type: "button", class: w === windowChoice ? "active" : "",
      dataset: { window: w }, onclick: () => { windowChoice = w; load(); } }, w)));
  const grid = h("div", { class: "charts", id: "charts" });
  const events = h("div");
  const error = h("p", { class: "error" });
  fill(main, h("p", {}, h("a", { href: "#/fleet" }, "‹ Fleet")), error, top, picker, grid, events);

  async function load() {
    try {
      const path = `/v1/devices/${encodeURIComponent(deviceId)}`;
      const [device, history] = await Promise.all([
        get(`${path}?events=100&telemetry=1`), get(`${path}/history?window=${windowChoice}`)]);
      error.textContent = "";
      fill(top, header(device));
      for (const button of picker.querySelectorAll("button")) {
        button.classList.toggle("active", button.dataset.window === windowChoice);
      }
      fill(grid, charts(history));
      fill(events, timeline(device.events));
    } catch (e) {
      error.textContent = e.message;
    }
  }
  load();
  return onChange(["fleet"], load);
}

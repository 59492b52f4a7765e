// The fleet: devices by group with their connection, served and assigned version per model,
// update phase and last sighting. Filtering, search and paging run on the registry
// (GET /v1/fleet/devices), so a page of 10,000 devices costs one page of rows.

import { h, fill, ago, badge, table } from "../dom.js";
import { get } from "../api.js";
import { onChange } from "../live.js";

const PAGE = 50;
const filters = { group: "", connection: "", search: "", offset: 0 };

function query() {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(filters.offset) });
  for (const key of ["group", "connection", "search"]) if (filters[key]) params.set(key, filters[key]);
  return `/v1/fleet/devices?${params}`;
}

function modelCells(device) {
  const names = Object.keys(device.models || {});
  if (!names.length) return "-";
  return names.map((name) => {
    const m = device.models[name];
    const served = m.active ?? "-";
    const assigned = m.assigned ?? "-";
    const differs = m.active !== m.assigned;
    return h("div", { class: differs ? "model differs" : "model" },
      h("span", { class: "model-name" }, name), " ",
      h("span", { title: "served" }, `v${served}`), " / ",
      h("span", { title: "assigned" }, `v${assigned}`));
  });
}

function deviceRow(device) {
  return h("tr", { dataset: { device: device.device_id } },
    h("td", {}, h("a", { href: `#/device/${encodeURIComponent(device.device_id)}`, class: "device-link" },
      device.device_id)),
    h("td", {}, device.group),
    h("td", {}, badge(device.connection)),
    h("td", {}, modelCells(device)),
    h("td", {}, device.phase || "-"),
    h("td", { title: device.last_seen || "" }, ago(device.last_seen)),
    h("td", { class: "error-cell" }, device.last_error ? `${device.last_error.event}: ${device.last_error.reason || ""}` : "-"));
}

function groupList(groups, onPick) {
  const all = groups.reduce((n, g) => n + g.devices, 0);
  const item = (name, label, g) => h("li", {},
    h("a", { href: "#/fleet", class: filters.group === name ? "active" : "",
      onclick: (e) => { e.preventDefault(); onPick(name); } },
      h("span", { class: "group-name" }, label), " ",
      g ? h("span", { class: "counts" }, `${g.online} online · ${g.stale} stale · ${g.offline} offline`)
        : h("span", { class: "counts" }, `${all} devices`)));
  return h("ul", { class: "groups", id: "groups" },
    item("", "All groups", null), groups.map((g) => item(g.group, g.group, g)));
}

export function render(main) {
  const side = h("aside", { class: "side" });
  const search = h("input", { type: "search", id: "fleet-search", placeholder: "Search device or group",
    value: filters.search, "aria-label": "search" });
  const connection = h("select", { id: "fleet-connection", "aria-label": "connection" },
    ["", "online", "stale", "offline"].map((c) =>
      h("option", { value: c, selected: c === filters.connection }, c || "any connection")));
  const summary = h("span", { id: "fleet-summary", class: "summary" });
  const prev = h("button", { type: "button", id: "fleet-prev" }, "‹ Previous");
  const next = h("button", { type: "button", id: "fleet-next" }, "Next ›");
  const body = h("div", { id: "fleet-table" });
  const error = h("p", { class: "error" });
  fill(main, h("section", { class: "with-side" }, side,
    h("div", { class: "content" },
      h("h1", {}, "Fleet"),
      h("div", { class: "toolbar" }, search, connection, prev, next, summary),
      error, body)));

  let stamp = 0;
  async function load() {
    const mine = ++stamp;
    try {
      const page = await get(query());
      if (mine !== stamp) return;  // a newer request is on its way
      error.textContent = page.registry.broker_connected ? "" :
        "The registry is not connected to its MQTT broker: it cannot hear any device.";
      fill(side, h("h2", {}, "Groups"), groupList(page.groups, (name) => {
        filters.group = name; filters.offset = 0; load();
      }));
      const last = Math.min(page.offset + page.devices.length, page.matched);
      summary.textContent = page.matched
        ? `${page.offset + 1}-${last} of ${page.matched} devices` : "No device matches.";
      prev.disabled = page.offset === 0;
      next.disabled = last >= page.matched;
      fill(body, table(["Device", "Group", "Connection", "Model: served / assigned", "Phase", "Last seen", "Last error"],
        page.devices.map(deviceRow), { class: "grid", id: "fleet-devices" }));
    } catch (e) {
      error.textContent = e.message;
    }
  }

  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { filters.search = search.value.trim(); filters.offset = 0; load(); }, 250);
  });
  connection.addEventListener("change", () => { filters.connection = connection.value; filters.offset = 0; load(); });
  prev.addEventListener("click", () => { filters.offset = Math.max(0, filters.offset - PAGE); load(); });
  next.addEventListener("click", () => { filters.offset += PAGE; load(); });
  load();
  const stop = onChange(["fleet", "deployments"], load);
  const tick = setInterval(load, 30000);  // "last seen" ages even when nothing changes
  return () => { stop(); clearInterval(tick); clearTimeout(typing); };
}

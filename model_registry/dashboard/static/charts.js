// Time-series charts with the vendored uPlot (vendor/uplot/README.md). A chart is a title,
// the times of its points and one or more named series; null values leave gaps.

import uPlot from "./vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];

/** A chart element: `times` are ISO strings, `series` [{label, values}], `unit` for the axis,
 * `span` the [since, until] ISO times the x axis covers. */
export function chart(title, times, series, { unit = "", width = 520, height = 180, format, span } = {}) {
  const box = h("figure", { class: "chart", dataset: { chart: title } }, h("figcaption", {}, title));
  if (!times.length) {
    box.append(h("p", { class: "empty" }, "No reports in this window."));
    return box;
  }
  const xs = times.map((t) => Date.parse(t) / 1000);
  const value = format || ((v) => (v === null || v === undefined ? "-" : `${+v.toPrecision(5)}${unit}`));
  const options = {
    width, height,
    series: [{}, ...series.map((s, i) => ({
      label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
      value: (u, v) => value(v),
    }))],
    axes: [{}, { values: (u, ticks) => ticks.map((v) => value(v)), size: 84 }],
    // The whole window, however few points it has: one point alone would span years.
    scales: { x: span ? { time: true, range: () => span.map((t) => Date.parse(t) / 1000) } : { time: true } },
    legend: { live: true },
  };
  new uPlot(options, [xs, ...series.map((s) => s.values)], box);
  return box;
}

// Live updates: one EventSource on /ui/events; views subscribe to the parts they show
// ("fleet", "models", "deployments", ...) and fetch again when one changed.

const listeners = new Set();
let source = null;

export function startLive(indicator) {
  if (source) return;
  source = new EventSource("/ui/events");
  source.addEventListener("open", () => { indicator.textContent = "live: on"; indicator.dataset.state = "on"; });
  source.addEventListener("error", () => { indicator.textContent = "live: reconnecting"; indicator.dataset.state = "off"; });
  source.addEventListener("change", (event) => {
    let changed = [];
    try { changed = JSON.parse(event.data).changed || []; } catch { return; }
    for (const listener of listeners) listener(changed);
  });
}

export function stopLive(indicator) {
  if (source) source.close();
  source = null;
  indicator.textContent = "live: off";
  indicator.dataset.state = "off";
}

/** Call `refresh` (at most once a second) when one of `parts` changes; returns the unsubscribe. */
export function onChange(parts, refresh) {
  let timer = null;
  const listener = (changed) => {
    if (!changed.some((part) => parts.includes(part)) || timer) return;
    timer = setTimeout(() => { timer = null; refresh(); }, 1000);
  };
  listeners.add(listener);
  return () => { listeners.delete(listener); if (timer) clearTimeout(timer); };
}

// The dashboard's frame: sign-in, navigation between views (#/fleet, #/device/ID, ...) and
// live updates. Each view is a module under views/ with `render(main, params)`, which
// returns a function that stops whatever the view started.

import { h, fill } from "./dom.js";
import { session, loadSession, signIn, signOut } from "./api.js";
import { startLive, stopLive } from "./live.js";
import * as fleet from "./views/fleet.js";
import * as device from "./views/device.js";
import * as models from "./views/models.js";
import * as rollouts from "./views/rollouts.js";
import * as drift from "./views/drift.js";
import * as experiments from "./views/experiments.js";

// [hash prefix, view, shown in the navigation as]
const VIEWS = [
  ["fleet", fleet, "Fleet"],
  ["device", device, null],
  ["models", models, "Models"],
  ["rollouts", rollouts, "Rollouts"],
  ["drift", drift, "Drift"],
  ["experiments", experiments, "Experiments"],
];

const main = document.getElementById("main");
const live = document.getElementById("live");
let stopView = null;

function route() {
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "fleet").split("/");
  const found = VIEWS.find(([prefix]) => prefix === name) || VIEWS[0];
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.view === found[0]);
  }
  if (stopView) stopView();
  fill(main);
  stopView = found[1].render(main, rest.map(decodeURIComponent)) || null;
}

function showSignIn(message) {
  stopLive(live);
  document.getElementById("signout").hidden = true;
  fill(document.getElementById("who"));
  const input = h("input", { type: "password", id: "token", autocomplete: "off",
    placeholder: "API token", "aria-label": "API token" });
  const error = h("p", { class: "error", id: "signin-error" }, message || "");
  const form = h("form", { id: "signin", class: "card" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API token (model-registry token create --role viewer)."),
    input, h("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await signIn(input.value);
      start();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  fill(main, form);
  input.focus();
}

function start() {
  fill(document.getElementById("who"), `${session.name} (${session.role})`);
  const out = document.getElementById("signout");
  out.hidden = false;
  startLive(live);
  window.addEventListener("hashchange", route);
  route();
}

document.getElementById("signout").addEventListener("click", async () => {
  await signOut();
  window.removeEventListener("hashchange", route);
  if (stopView) stopView();
  stopView = null;
  showSignIn("Signed out.");
});

fill(document.getElementById("nav"),
  VIEWS.filter(([, , label]) => label).map(([prefix, , label]) =>
    h("a", { href: `#/${prefix}`, dataset: { view: prefix } }, label)));

loadSession().then((signedIn) => (signedIn ? start() : showSignIn()),
  (e) => showSignIn(e.message));

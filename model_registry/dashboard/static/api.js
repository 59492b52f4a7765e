// Talking to the registry's REST API with the session cookie. Changes carry the session's
// CSRF value in X-CSRF-Token (docs/dashboard.md, "Signing in").

export const session = { role: null, name: null, csrf: null };

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  }
  return data;
}

export const get = (path) => api("GET", path);

const RANK = { viewer: 0, publisher: 1, admin: 2 };
/** Whether the signed-in token may do what needs `role`. */
export function can(role) {
  return session.role !== null && RANK[session.role] >= RANK[role];
}

export async function loadSession() {
  try {
    Object.assign(session, await get("/ui/session"));
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

export async function signIn(token) {
  Object.assign(session, await api("POST", "/ui/session", { token }));
}

export async function signOut() {
  await api("DELETE", "/ui/session");
  Object.assign(session, { role: null, name: null, csrf: null });
}

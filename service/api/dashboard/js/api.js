// REST calls with the service's bearer auth: on 401/403 the page asks for the token once
// (however many requests were refused at the same moment) and keeps it in sessionStorage.

const TOKEN_KEY = "linnaeus-metrics-token";
let asking = null;

export function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function askToken(status) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("token-dialog");
      const input = document.getElementById("token-input");
      document.getElementById("token-reason").textContent =
        status === 403 ? "The token was refused; enter a valid one." : "This service needs a bearer token.";
      input.value = "";
      dialog.addEventListener("close", () => {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        asking = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return asking;
}

/** fetch() with the token; re-asks for the token on 401/403 and retries. */
export async function authFetch(path, init = {}) {
  for (;;) {
    const reply = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
    if (reply.status !== 401 && reply.status !== 403) return reply;
    await askToken(reply.status);
  }
}

export class ApiError extends Error {
  constructor(status, body) {
    super(`${status} ${body.type || ""}: ${body.detail || ""}`);
    this.status = status;
  }
}

export async function getJSON(path) {
  const reply = await authFetch(path);
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new ApiError(reply.status, body);
  return body;
}

const enc = encodeURIComponent;
export const api = {
  runs: () => getJSON("/v1/runs"),
  run: (id) => getJSON(`/v1/runs/${enc(id)}`),
  metrics: (id) => getJSON(`/v1/runs/${enc(id)}/metrics`),
  summary: (id) => getJSON(`/v1/runs/${enc(id)}/summary`),
  history: (id, keys, maxPoints) => {
    const q = new URLSearchParams();
    if (keys) q.set("keys", keys.join(","));
    if (maxPoints) q.set("max_points", String(maxPoints));
    return getJSON(`/v1/runs/${enc(id)}/history?${q}`);
  },
  streamPath: (id) => `/v1/runs/${enc(id)}/stream`,
};

// The demo page: everything goes through realtime.js, nothing else (no CDN, no build).
import { connect } from "/client/realtime.js";

const $ = (id) => document.getElementById(id);
const socketUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
let client = null;

async function login(username, password) {
  const answer = await fetch("/auth/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username, password }),
  });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error ? body.error.message : `login failed (${answer.status})`);
  return body.access_token;
}

function showError(where, error) {
  $(where).textContent = error ? String(error.message || error) : "";
}

function showState({ state, code, reason }) {
  const label = $("state");
  label.dataset.state = state;
  label.textContent = code && state !== "open" ? `${state} (${code}${reason ? ": " + reason : ""})` : state;
}

// -- projects: a list kept live by the tenant's topic ------------------------------------

const projects = new Map();

function renderProjects() {
  const list = $("projects");
  list.replaceChildren(
    ...[...projects.values()].sort((a, b) => b.id - a.id).map(projectItem),
  );
}

function projectItem(project) {
  const item = document.createElement("li");
  item.dataset.id = project.id;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = project.name;
  const rename = button("Rename", () => renameProject(project));
  const remove = button("Delete", () => run(client.call("projects.delete", { id: project.id })));
  rename.className = "rename";
  remove.className = "delete";
  item.append(name, rename, remove);
  return item;
}

function button(text, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

function renameProject(project) {
  const name = prompt("New name", project.name);
  if (name && name !== project.name) run(client.call("projects.update", { id: project.id, name }));
}

function onProjectEvent({ op, project }) {
  if (op === "deleted") projects.delete(project.id);
  else projects.set(project.id, project);
  renderProjects();
}

async function reloadProjects() {
  const page = await client.call("projects.list", { page: 1, per_page: 100 });
  projects.clear();
  for (const project of page.data) projects.set(project.id, project);
  renderProjects();
  $("projects-note").textContent = page.meta.total > 100 ? `showing 100 of ${page.meta.total}` : "";
}

// -- a job and its progress bar -----------------------------------------------------------

async function startJob() {
  $("start-job").disabled = true;
  $("job-steps").replaceChildren();
  $("job-progress").value = 0;
  $("job-state").textContent = "starting";
  try {
    const { job_id } = await client.call("jobs.start", { total_steps: 5, step_seconds: 0.3 });
    $("job-state").textContent = "running";
    const done = await client.watchJob(job_id, (progress) => {
      $("job-progress").value = progress.progress;
      const step = document.createElement("li");
      step.dataset.step = progress.step;
      step.textContent = `step ${progress.step} of ${progress.total_steps}`;
      $("job-steps").append(step);
    });
    $("job-state").textContent = done.state;
    $("job-state").dataset.done = (Number($("job-state").dataset.done || 0) + 1).toString();
  } catch (error) {
    $("job-state").textContent = "failed";
    showError("app-error", error);
  } finally {
    $("start-job").disabled = false;
  }
}

// -- presence: who is subscribed to the tenant's topic, on every node ----------------------

/** Pushed presence: the subscribe answer's snapshot, then joins and leaves as they happen. */
function showPresence(people) {
  $("presence").replaceChildren(
    ...people.map(({ sub, name }) => {
      const item = document.createElement("li");
      item.dataset.sub = sub;
      item.textContent = name ? `${name} (${sub})` : sub;
      return item;
    }),
  );
}

function run(promise) {
  promise.then(() => showError("app-error", null), (error) => showError("app-error", error));
}

// -- start ----------------------------------------------------------------------------------

async function start(token) {
  client = connect(socketUrl, { token });
  window.realtimeClient = client; // for the console (and the browser tests)
  client.on("state", showState);
  client.on("error", (error) => showError("app-error", error));
  const me = await client.call("me", {});
  $("who").textContent = `${me.name || me.sub} · ${me.roles.join(", ")}`;
  $("tenant").textContent = me.tenant_id;
  $("login").hidden = true;
  $("app").hidden = false;
  const topic = `projects.${me.tenant_id}`;
  const subscription = client.subscribe(topic, onProjectEvent, {
    onReset: () => run(reloadProjects()),
    onPresence: showPresence,
  });
  await subscription.ready;
  await reloadProjects();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("username").value;
  const password = $("password").value;
  // the provider logs in again for each new token: refresh on auth.expiring, reconnects
  const provider = () => login(username, password);
  provider().then(
    (first) => {
      let fresh = first;
      return start(async () => {
        const token = fresh ?? (await provider());
        fresh = null;
        return token;
      });
    },
  ).catch((error) => showError("login-error", error));
});

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start($("token").value.trim()).catch((error) => showError("login-error", error));
});

$("create-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("project-name");
  run(client.call("projects.create", { name: input.value }).then(() => { input.value = ""; }));
});

$("start-job").addEventListener("click", () => startJob());

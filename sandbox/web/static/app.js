// The sandbox page. Users act through the emulator's control API (/_sandbox/...); the page
// watches through one stream of server-sent events (/_sandbox/events): a snapshot first,
// then each change. Plain JavaScript, no build step, nothing fetched from elsewhere.
"use strict";

const S = {
  guild: null, botId: null, ownerId: null,
  channels: new Map(), members: new Map(), commands: [], presence: null,
  messages: new Map(),      // id -> message view
  byChannel: new Map(),     // channel id -> message ids, in arrival order
  interactions: new Map(),  // id -> interaction view
  health: null, history: [], kills: [], chaos: null,
  current: null, author: null,
  mode: null,               // {kind: "reply"|"edit", id} or {kind: "command", entry}
  unread: new Set(),
  updates: new Map(),       // message id -> changes seen (a streamed answer grows)
  changedAt: new Map(),     // message id -> Date.now() of its last change
  arrivals: [],             // [{t, bot}]: every message, for the timeline
  offset: 0,                // server clock - this page's clock, in seconds
  suggest: {items: [], index: 0, kind: null},
};
const STREAMING_MS = 1500;
const TIMELINE_S = 60;
const STATUSES = ["online", "idle", "dnd", "offline"];
const ACTIVITY = {0: "Playing", 1: "Streaming", 2: "Listening to", 3: "Watching", 5: "Competing in"};
const SPEAKER = '<svg width="16" height="16" viewBox="0 0 24 24" aria-hidden="true"><path fill="currentColor" d="M11 4.5 6.5 8.5H3v7h3.5l4.5 4zM15 8.5a5 5 0 0 1 0 7M17.8 5.7a9 9 0 0 1 0 12.6" stroke="currentColor" stroke-width="1.8" stroke-linecap="round"/></svg>';
const OPTION_TYPES = {3: "text", 4: "integer", 5: "true/false", 6: "user", 7: "channel", 8: "role", 10: "number"};

const $ = (sel, root = document) => root.querySelector(sel);
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
const escRe = s => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const serverNow = () => Date.now() / 1000 + S.offset;
const clock = t => new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
const msgTime = m => Date.parse(m.timestamp) / 1000;

// --- talking to the sandbox ---------------------------------------------------------------

async function api(method, path, body) {
  const init = {method, headers: {}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch("/_sandbox/" + path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const why = (data && (data.error || data.detail)) || `${resp.status} ${resp.statusText}`;
    toast(`${method} ${path}: ${why}`);
    throw new Error(why);
  }
  return data;
}

let toastTimer = null;
function toast(text, kind = "error") {
  const box = $("#toast");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
}

function connect() {
  const es = new EventSource("/_sandbox/events");
  const live = $("#live");
  es.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  es.onerror = () => { live.className = "live off"; live.textContent = "reconnecting…"; };
  const on = (name, fn) => es.addEventListener(name, e => {
    try { fn(JSON.parse(e.data)); } catch (err) { console.error(name, err); }
  });
  on("snapshot", onSnapshot);
  on("message", m => { upsertMessage(m, true); });
  on("message_deleted", d => deleteMessage(d.id));
  on("channels", list => { setChannels(list); renderChannels(); renderHeader(); });
  on("members", list => { setMembers(list); renderMembers(); renderAuthors(); });
  on("commands", list => { S.commands = list; });
  on("presence", p => { S.presence = p; renderBotCard(); });
  on("interaction", i => { upsertInteraction(i); if (i.channel_id === S.current) renderMessages(); });
  on("health", h => { S.health = h; S.chaos = h.chaos; renderHealth(); });
  on("transition", t => { S.history.push(t); onHistory(); });
  on("kill", k => { S.kills.push(k); });
  on("chaos", c => { S.chaos = c; renderChaos(); });
}

// --- the model ------------------------------------------------------------------------------

function onSnapshot(s) {
  S.offset = s.now - Date.now() / 1000;
  S.guild = s.guild; S.botId = s.bot_user_id; S.ownerId = s.owner_id;
  S.commands = s.commands; S.presence = s.presence; S.health = s.health;
  S.chaos = s.health && s.health.chaos; S.history = s.history || [];
  setChannels(s.channels); setMembers(s.members);
  S.messages.clear(); S.byChannel.clear(); S.interactions.clear(); S.arrivals = [];
  for (const m of s.messages) upsertMessage(m, false);
  for (const i of s.interactions) upsertInteraction(i);
  if (!S.current || !S.channels.has(S.current)) {
    const general = [...S.channels.values()].find(c => c.name === "general" && c.type === 0);
    S.current = (general || [...S.channels.values()].find(c => c.type === 0) || {}).id || null;
  }
  $("#guild-name").textContent = S.guild.name;
  renderChannels(); renderHeader(); renderMembers(); renderAuthors(); renderBotCard();
  renderMessages(true); renderHealth(); onHistory();
}

function setChannels(list) {
  const before = new Map([...S.channels.values()].map(c => [c.id, c.name]));
  S.channels = new Map(list.map(c => [c.id, c]));
  S.renamed = new Set(list.filter(c => before.has(c.id) && before.get(c.id) !== c.name).map(c => c.id));
}
function setMembers(list) { S.members = new Map(list.map(m => [m.id, m])); }

function upsertMessage(m, live) {
  const known = S.messages.get(m.id);
  S.messages.set(m.id, m);
  if (!known) {
    if (!S.byChannel.has(m.channel_id)) S.byChannel.set(m.channel_id, []);
    S.byChannel.get(m.channel_id).push(m.id);
    S.arrivals.push({t: live ? serverNow() : msgTime(m), bot: m.author.bot});
    if (live && m.channel_id !== S.current) { S.unread.add(m.channel_id); renderChannels(); }
  } else {
    S.updates.set(m.id, (S.updates.get(m.id) || 0) + 1);
    S.changedAt.set(m.id, Date.now());
    setTimeout(() => refreshMessage(m.id), STREAMING_MS + 50);
  }
  if (!live || m.channel_id !== S.current) return;
  if (known) refreshMessage(m.id);
  else renderMessages();
}

function deleteMessage(id) {
  const m = S.messages.get(id);
  if (!m) return;
  S.messages.delete(id);
  const ids = S.byChannel.get(m.channel_id) || [];
  S.byChannel.set(m.channel_id, ids.filter(x => x !== id));
  if (m.channel_id === S.current) renderMessages();
}

function upsertInteraction(i) {
  const known = S.interactions.get(i.id);
  S.interactions.set(i.id, {...i, seenAt: known ? known.seenAt : serverNow()});
}

// A message as one line of text (reply previews): mentions by name, no markup.
const plain = text => text.replace(/<@!?(\d+)>/g, (_, id) => "@" + userName(id))
  .replace(/<#(\d+)>/g, (_, id) => "#" + channelName(id)).replace(/[*_`~]/g, "").replace(/\s+/g, " ");
const userName = id => (S.members.get(id) || {}).username || "unknown-user";
const channelName = id => (S.channels.get(id) || {}).name || "unknown-channel";

// --- channels -------------------------------------------------------------------------------

function renderChannels() {
  const box = $("#channel-list");
  box.textContent = "";
  const channels = [...S.channels.values()].filter(c => c.type !== 1);
  const order = (a, b) => (a.type === 2) - (b.type === 2) || a.position - b.position;
  const top = channels.filter(c => !c.parent_id && c.type !== 4).sort(order);
  const categories = channels.filter(c => c.type === 4).sort((a, b) => a.position - b.position);
  top.forEach(c => box.append(channelRow(c)));
  for (const cat of categories) {
    box.append(el("div", "category", cat.name));
    channels.filter(c => c.parent_id === cat.id).sort(order).forEach(c => box.append(channelRow(c)));
  }
  S.renamed = new Set();
}

function channelRow(c) {
  const voice = c.type === 2;
  const row = el("div", "channel" + (voice ? " voice" : ""));
  row.dataset.id = c.id;
  row.dataset.name = c.name;
  const icon = el("span", "icon", voice ? "" : "#");
  if (voice) icon.innerHTML = SPEAKER;
  row.append(icon, el("span", "", c.name));
  if (voice) row.title = "A counter channel: the stats service renames it as the numbers change";
  if (c.id === S.current) row.classList.add("active");
  if (S.unread.has(c.id)) row.classList.add("unread");
  if (S.renamed && S.renamed.has(c.id)) row.classList.add("flash");
  if (!voice) row.onclick = () => selectChannel(c.id);
  return row;
}

function selectChannel(id) {
  S.current = id;
  S.unread.delete(id);
  renderChannels(); renderHeader(); renderMessages(true);
  $("#input").focus();
}

function renderHeader() {
  const c = S.channels.get(S.current);
  if (!c) return;
  $("#channel-title").textContent = c.name;
  $("#channel-topic").textContent = c.topic || "";
  $("#input").placeholder = `Message #${c.name}`;
}

// --- messages -------------------------------------------------------------------------------

function incidents() {
  // Crashes and recoveries from the supervisor's state changes: what the chat and the
  // timeline show next to the messages.
  const out = [];
  const down = new Map();
  for (const h of S.history) {
    const crashed = ["BACKOFF", "FATAL", "EXITED"].includes(h.to) && h.from !== "STOPPED";
    if (crashed && !down.has(h.service)) {
      down.set(h.service, h.t);
      out.push({t: h.t, service: h.service, kind: "crash", text: String(h.why || h.to).split(";")[0], to: h.to});
    } else if (h.to === "FATAL") {
      out.push({t: h.t, service: h.service, kind: "crash", text: "FATAL: " + h.why, to: h.to});
    } else if (h.to === "RUNNING" && down.has(h.service)) {
      out.push({t: h.t, service: h.service, kind: "back", downtime: h.t - down.get(h.service)});
      down.delete(h.service);
    }
  }
  return out;
}

function renderMessages(toBottom = false) {
  const box = $("#messages");
  const stick = toBottom || box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  box.textContent = "";
  const items = [];
  const ids = S.byChannel.get(S.current) || [];
  for (const id of ids) items.push({t: msgTime(S.messages.get(id)), kind: "msg", m: S.messages.get(id)});
  const answered = new Set(ids.map(id => (S.messages.get(id).interaction || {}).id).filter(Boolean));
  for (const i of S.interactions.values()) {
    if (i.channel_id === S.current && !answered.has(i.id)) items.push({t: i.seenAt, kind: "pending", i});
  }
  for (const n of incidents()) items.push({t: n.t, kind: "notice", n});  // in every channel
  items.sort((a, b) => a.t - b.t);
  if (!items.length) box.append(el("div", "empty", "No messages yet. Say hello below, or mention the bot with @."));
  let prev = null;
  for (const item of items) {
    if (item.kind === "msg") {
      const m = item.m;
      const cont = prev && prev.kind === "msg" && prev.m.author.id === m.author.id && !m.reply_to_id &&
        !m.interaction && item.t - prev.t < 420;
      box.append(messageNode(m, cont));
    } else if (item.kind === "pending") {
      box.append(pendingNode(item.i));
    } else {
      box.append(noticeNode(item.n));
    }
    prev = item;
  }
  if (stick) box.scrollTop = box.scrollHeight;
}

function refreshMessage(id) {
  const node = $(`#messages .msg[data-id="${id}"]`);
  const m = S.messages.get(id);
  if (!node || !m) return;
  const box = $("#messages");
  const stick = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  node.replaceWith(messageNode(m, node.classList.contains("cont")));
  if (stick) box.scrollTop = box.scrollHeight;
}

function avatar(user, small = false) {
  const a = el("span", "avatar" + (small ? " small" : ""), (user.username || "?")[0].toUpperCase());
  let hash = 0;
  for (const ch of String(user.id)) hash = (hash * 31 + ch.charCodeAt(0)) % 360;
  a.style.background = user.bot ? "#5865f2" : `hsl(${hash}, 45%, 45%)`;
  return a;
}

function messageNode(m, cont) {
  const node = el("div", "msg" + (cont ? " cont" : ""));
  node.dataset.id = m.id;
  node.dataset.author = m.author.username;
  node.dataset.bot = String(m.author.bot);
  node.dataset.updates = String(S.updates.get(m.id) || 0);
  if (m.ephemeral) node.classList.add("ephemeral");
  if (m.author.bot && Date.now() - (S.changedAt.get(m.id) || 0) < STREAMING_MS) node.classList.add("streaming");
  if (m.reply_to_id) {
    const ref = S.messages.get(m.reply_to_id);
    const line = el("div", "reply");
    if (ref) {
      line.append(el("b", "", "@" + ref.author.username), el("span", "", plain(ref.content).slice(0, 120) || "(embed)"));
      line.onclick = () => flashMessage(ref.id);
      line.style.cursor = "pointer";
    } else {
      line.append(el("span", "", "Original message was deleted"));
    }
    node.append(line);
  }
  if (m.interaction) {
    const used = el("div", "used");
    used.append(el("b", "", userName(m.interaction.user_id)), el("span", "", "used"), el("b", "", "/" + m.interaction.name));
    node.append(used);
  }
  node.append(avatar(m.author));
  const head = el("div", "head");
  head.append(el("span", "name", m.author.username));
  if (m.author.bot) head.append(el("span", "tag", "BOT"));
  head.append(el("span", "time", clock(msgTime(m))));
  const body = el("div", "body");
  body.append(head);
  const content = el("div", "content");
  content.innerHTML = md(m.content || "");
  if (m.edited_at && !m.author.bot) content.append(el("span", "edited", "(edited)"));
  if (m.content) body.append(content);
  for (const e of m.embeds || []) body.append(embedNode(e));
  if (m.poll) body.append(pollNode(m));
  for (const a of m.attachments || []) body.append(attachmentNode(a));
  if ((m.components || []).length) body.append(componentsNode(m.components));
  if ((m.reactions || []).length) body.append(reactionsNode(m));
  node.append(body);
  if (m.ephemeral) node.append(el("div", "ephemeral-note", `Only ${m.interaction ? userName(m.interaction.user_id) : "the user"} can see this`));
  node.append(actionsNode(m));
  return node;
}

function actionsNode(m) {
  const bar = el("div", "actions");
  const add = (label, title, fn) => { const b = el("button", "", label); b.type = "button"; b.title = title; b.onclick = fn; bar.append(b); };
  if (!m.ephemeral) {
    add("Reply", "Reply to this message", () => setMode({kind: "reply", id: m.id}));
    add("React", "React with a thumbs up", () => react(m, "👍"));
  }
  if (!m.author.bot) {
    add("Edit", "Edit this message (as its author)", () => setMode({kind: "edit", id: m.id}));
    add("Delete", "Delete this message", () => api("DELETE", `messages/${m.id}`).catch(() => {}));
  }
  return bar;
}

function flashMessage(id) {
  const node = $(`#messages .msg[data-id="${id}"]`);
  if (!node) return;
  node.scrollIntoView({block: "center"});
  node.classList.add("highlight");
  setTimeout(() => node.classList.remove("highlight"), 1500);
}

function pendingNode(i) {
  const failed = !i.acknowledged && serverNow() - i.seenAt > 3.5;
  const node = el("div", "pending" + (failed ? " failed" : ""));
  node.dataset.interaction = i.id;
  const deferred = (i.responses || []).some(r => r.type === 5);
  const ephemeral = (i.responses || []).some(r => r.ephemeral);
  node.textContent = failed ? `/${i.name}: the application did not respond`
    : deferred ? `${userName(S.botId)} is thinking… (/${i.name} by ${userName(i.user_id)})`
    : i.acknowledged ? `/${i.name} by ${userName(i.user_id)}: answered${ephemeral ? " (only they can see it)" : ""}`
    : `${userName(i.user_id)} used /${i.name}…`;
  if (!i.acknowledged && !failed) setTimeout(() => { if (i.channel_id === S.current) renderMessages(); }, 3600);
  return node;
}

function noticeNode(n) {
  const node = el("div", "notice " + n.kind);
  node.dataset.service = n.service;
  node.append(el("span", "mark", n.kind === "crash" ? "✖" : "✔"));
  const text = n.kind === "crash" ? `${n.service} went down: ${n.text}` : `${n.service} is back, ${n.downtime.toFixed(2)} s after it went down`;
  node.append(el("span", "", text), el("time", "", clock(n.t)));
  return node;
}

// Discord's markdown, enough of it: code blocks, inline code, bold, italics, underline,
// strike, quotes, mentions, timestamps and links. Everything is escaped first.
function md(src) {
  const parts = src.split("```");
  return parts.map((part, i) => {
    if (i % 2 === 0) {  // text around code blocks: the newlines next to a block are its own
      if (i > 0) part = part.replace(/^\n/, "");
      if (i < parts.length - 1) part = part.replace(/\n$/, "");
      return inline(part);
    }
    const nl = part.indexOf("\n");
    const code = nl >= 0 && /^[\w+#.-]*$/.test(part.slice(0, nl).trim()) ? part.slice(nl + 1) : part;
    return "<pre><code>" + esc(code.replace(/\n$/, "")) + "</code></pre>";
  }).join("");
}
function inline(text) {
  return text.split("\n").map(line => {
    const quote = line.startsWith("> ");
    if (quote) line = line.slice(2);
    const html = line.split(/(`[^`]+`)/).map((s, i) => (i % 2 ? "<code>" + esc(s.slice(1, -1)) + "</code>" : fmt(esc(s)))).join("");
    return quote ? "<blockquote>" + html + "</blockquote>" : html;
  }).join("<br>").replace(/<\/blockquote><br>/g, "</blockquote>");
}
function fmt(s) {
  return s
    .replace(/&lt;@!?(\d+)&gt;/g, (_, id) => `<span class="mention">@${esc(userName(id))}</span>`)
    .replace(/&lt;@&amp;(\d+)&gt;/g, () => `<span class="mention">@role</span>`)
    .replace(/&lt;#(\d+)&gt;/g, (_, id) => `<span class="mention">#${esc(channelName(id))}</span>`)
    .replace(/&lt;t:(\d+)(?::\w)?&gt;/g, (_, t) => `<code>${esc(new Date(t * 1000).toLocaleString())}</code>`)
    .replace(/&lt;a?:(\w+):\d+&gt;/g, ":$1:")
    .replace(/@(everyone|here)\b/g, '<span class="mention">@$1</span>')
    .replace(/\*\*(.+?)\*\*/g, "<b>$1</b>")
    .replace(/__(.+?)__/g, "<u>$1</u>")
    .replace(/(^|[^*\w])\*(?!\s)([^*]+?)\*(?!\w)/g, "$1<i>$2</i>")
    .replace(/(^|[^\w])_(?!\s)([^_]+?)_(?!\w)/g, "$1<i>$2</i>")
    .replace(/~~(.+?)~~/g, "<s>$1</s>")
    .replace(/\b(https?:\/\/[^\s<]+)/g, '<a href="$1" target="_blank" rel="noopener">$1</a>');
}

function embedNode(e) {
  const node = el("div", "embed");
  if (typeof e.color === "number") node.style.borderLeftColor = "#" + e.color.toString(16).padStart(6, "0");
  if (e.author && e.author.name) node.append(el("div", "embed-author", e.author.name));
  if (e.title) {
    const title = el("div", "embed-title");
    if (e.url) { const a = el("a", "", e.title); a.href = e.url; a.target = "_blank"; title.append(a); } else title.textContent = e.title;
    node.append(title);
  }
  if (e.description) { const d = el("div", "embed-desc"); d.innerHTML = md(e.description); node.append(d); }
  if ((e.fields || []).length) {
    const grid = el("div", "embed-fields");
    for (const f of e.fields) {
      const field = el("div", "embed-field" + (f.inline ? " inline" : ""));
      const name = el("div", "embed-field-name");
      name.innerHTML = inline(String(f.name || ""));
      const value = el("div", "embed-field-value");
      value.innerHTML = md(String(f.value || ""));
      field.append(name, value);
      grid.append(field);
    }
    node.append(grid);
  }
  if (e.image && e.image.url) { const img = el("img", "embed-image"); img.src = e.image.url; img.alt = ""; node.append(img); }
  const footer = [e.footer && e.footer.text, e.timestamp && new Date(e.timestamp).toLocaleString()].filter(Boolean);
  if (footer.length) node.append(el("div", "embed-footer", footer.join(" • ")));
  return node;
}

function pollNode(m) {
  const p = m.poll;
  const node = el("div", "poll");
  const question = typeof p.question === "object" && p.question ? p.question.text : p.question;
  node.append(el("div", "poll-question", question || "Poll"));
  const answers = p.answers || [];
  const total = answers.reduce((n, a) => n + (a.votes || 0), 0);
  for (const a of answers) {
    const text = typeof a.text === "string" ? a.text : (a.poll_media && a.poll_media.text) || "";
    const row = el("button", "poll-answer");
    row.type = "button";
    row.title = "Vote as the member you write as";
    const bar = el("span", "bar");
    bar.style.width = total ? `${(100 * (a.votes || 0)) / total}%` : "0";
    row.append(bar, el("span", "", text), el("span", "", `${a.votes || 0}`));
    row.onclick = () => api("POST", `polls/${m.id}/votes`, {user_id: S.author, answer: a.answer_id || text}).catch(() => {});
    node.append(row);
  }
  const status = p.finalized ? "Final results" : p.expiry ? `ends ${new Date(p.expiry).toLocaleString()}` : "open";
  node.append(el("div", "poll-meta", `${total} vote${total === 1 ? "" : "s"} • ${status}`));
  return node;
}

function reactionsNode(m) {
  const box = el("div", "reactions");
  for (const r of m.reactions) {
    const emoji = typeof r.emoji === "object" && r.emoji ? r.emoji.name : r.emoji;
    const mine = (r.users || []).includes(S.author);
    const chip = el("button", "reaction" + (mine ? " mine" : ""), `${emoji} ${r.count}`);
    chip.type = "button";
    chip.onclick = () => react(m, emoji, mine);
    box.append(chip);
  }
  return box;
}

function react(m, emoji, remove = false) {
  const mine = (m.reactions || []).some(r => (r.emoji === emoji || (r.emoji && r.emoji.name === emoji)) && (r.users || []).includes(S.author));
  api(remove || mine ? "DELETE" : "POST", "reactions", {message_id: m.id, user_id: S.author, emoji}).catch(() => {});
}

function attachmentNode(a) {
  const link = el("a", "attachment", `📎 ${a.filename} (${Math.ceil((a.size || 0) / 1024)} KB)`);
  link.href = a.url || "#";
  link.target = "_blank";
  return link;
}

function componentsNode(rows) {
  const box = el("div", "components");
  const styles = {1: "primary", 2: "", 3: "success", 4: "danger"};
  for (const row of rows) {
    for (const c of row.components || [row]) {
      if (c.type === 2) {
        const b = el("button", styles[c.style] || "", (c.emoji && c.emoji.name ? c.emoji.name + " " : "") + (c.label || ""));
        b.type = "button";
        b.disabled = true;
        b.title = "Buttons are shown as the bot sent them";
        box.append(b);
      } else if (c.type === 3) {
        box.append(el("button", "", c.placeholder || "Select…"));
      }
    }
  }
  return box;
}

// --- members ---------------------------------------------------------------------------------

function renderMembers() {
  const box = $("#member-list");
  box.textContent = "";
  const all = [...S.members.values()];
  const groups = [
    ["Online", all.filter(m => m.member && m.status !== "offline")],
    ["Offline", all.filter(m => m.member && m.status === "offline")],
    ["Not in the server", all.filter(m => !m.member)],
  ];
  for (const [title, list] of groups) {
    if (!list.length) continue;
    box.append(el("div", "member-group", `${title} — ${list.length}`));
    list.sort((a, b) => b.bot - a.bot || a.username.localeCompare(b.username)).forEach(m => box.append(memberRow(m)));
  }
}

function activityText(activities) {
  const a = (activities || [])[0];
  if (!a) return "";
  if (a.type === 4) return a.state || a.name || "";
  return `${ACTIVITY[a.type] || ""} ${a.name || ""}`.trim();
}

function memberRow(m) {
  const row = el("div", "member" + (m.member ? "" : " gone"));
  row.dataset.id = m.id;
  row.dataset.username = m.username;
  const av = avatar(m, true);
  if (m.member) av.dataset.status = m.status;
  const who = el("div", "who");
  const name = el("span", "uname", m.username);
  if (m.bot) name.append(" ", el("span", "tag", "BOT"));
  if (m.owner) name.append(" ", el("span", "tag owner", "OWNER"));
  who.append(name);
  const act = m.banned ? "banned" : activityText(m.activities);
  if (act) who.append(el("span", "activity", act));
  row.append(av, who);
  if (!m.bot) {
    const actions = el("div", "member-actions");
    if (m.member) {
      const sel = el("select");
      sel.title = "Presence";
      for (const s of STATUSES) { const o = el("option", "", s); o.value = s; o.selected = s === m.status; sel.append(o); }
      sel.onchange = () => api("POST", "presences", {user_id: m.id, status: sel.value}).catch(() => {});
      actions.append(sel);
      actions.append(button("Leave", () => api("DELETE", `members/${m.id}`)));
    } else if (!m.banned) {
      actions.append(button("Rejoin", () => api("POST", "members", {user_id: m.id})));
    }
    actions.append(m.banned ? button("Unban", () => api("DELETE", `bans/${m.id}`)) : button("Ban", () => api("POST", "bans", {user_id: m.id})));
    row.append(actions);
  }
  return row;
}

function button(label, fn) {
  const b = el("button", "", label);
  b.type = "button";
  b.onclick = () => { Promise.resolve(fn()).catch(() => {}); };
  return b;
}

function renderAuthors() {
  const sel = $("#author");
  const people = [...S.members.values()].filter(m => m.member && !m.bot);
  if (!people.some(m => m.id === S.author)) {
    S.author = (people.find(m => m.id === S.ownerId) || people[0] || {}).id || null;
  }
  sel.textContent = "";
  for (const m of people) {
    const o = el("option", "", m.username);
    o.value = m.id;
    o.selected = m.id === S.author;
    sel.append(o);
  }
}

function renderBotCard() {
  const bot = S.members.get(S.botId);
  if (!bot) return;
  const av = $("#bot-avatar");
  av.textContent = bot.username[0].toUpperCase();
  av.style.background = "#5865f2";
  const p = S.presence || {};
  av.dataset.status = p.status === "invisible" ? "offline" : p.status || "offline";
  $("#bot-name").textContent = bot.username;
  $("#bot-activity").textContent = activityText(p.activities) || p.status || "";
  $("#bot-card").dataset.status = p.status || "";
}

// --- the composer -----------------------------------------------------------------------------

function setMode(mode) {
  S.mode = mode;
  const bar = $("#mode-bar");
  const form = $("#command-form");
  const input = $("#input");
  bar.hidden = !mode;
  form.hidden = !(mode && mode.kind === "command");
  input.hidden = !!(mode && mode.kind === "command");
  if (!mode) { input.focus(); return; }
  if (mode.kind === "reply") {
    $("#mode-text").innerHTML = `Replying to <b>${esc(S.messages.get(mode.id).author.username)}</b>`;
    input.focus();
  } else if (mode.kind === "edit") {
    $("#mode-text").textContent = "Editing a message (Enter saves)";
    input.value = S.messages.get(mode.id).content;
    input.focus();
  } else {
    $("#mode-text").textContent = mode.entry.description || `/${mode.entry.label}`;
    buildCommandForm(mode.entry);
  }
}

function commandEntries() {
  const out = [];
  for (const c of S.commands) {
    const subs = (c.options || []).filter(o => o.type === 1 || o.type === 2);
    if (!subs.length) {
      out.push({label: c.name, name: c.name, path: [], options: c.options || [], description: c.description});
      continue;
    }
    for (const s of subs) {
      if (s.type === 1) {
        out.push({label: `${c.name} ${s.name}`, name: c.name, path: [s.name], options: s.options || [], description: s.description});
      } else {
        for (const g of s.options || []) {
          out.push({label: `${c.name} ${s.name} ${g.name}`, name: c.name, path: [s.name, g.name], options: g.options || [], description: g.description});
        }
      }
    }
  }
  return out;
}

function updateSuggestions() {
  const input = $("#input");
  const before = input.value.slice(0, input.selectionStart);
  let items = [];
  let kind = null;
  if (/^\/[\w-]*$/.test(before) && !S.mode) {
    kind = "command";
    const q = before.slice(1).toLowerCase();
    items = commandEntries().filter(e => e.label.startsWith(q) || e.name.startsWith(q));
  } else {
    const at = /(^|\s)@([\w.-]*)$/.exec(before);
    if (at) {
      kind = "member";
      const q = at[2].toLowerCase();
      items = [...S.members.values()].filter(m => m.member && m.username.toLowerCase().startsWith(q))
        .sort((a, b) => b.bot - a.bot || a.username.localeCompare(b.username));
    }
  }
  S.suggest = {items, index: 0, kind};
  renderSuggestions();
}

function renderSuggestions() {
  const box = $("#suggestions");
  const {items, index, kind} = S.suggest;
  box.hidden = !items.length;
  box.textContent = "";
  if (!items.length) return;
  box.append(el("div", "suggestion-title", kind === "command" ? "Slash commands of the bot" : "Members"));
  items.forEach((item, i) => {
    const row = el("div", "suggestion" + (i === index ? " selected" : ""));
    row.setAttribute("role", "option");
    if (kind === "command") {
      row.dataset.command = item.label;
      row.append(el("b", "", "/" + item.label), el("span", "desc", item.description || ""));
    } else {
      row.dataset.username = item.username;
      row.append(avatar(item, true), el("b", "", item.username));
      if (item.bot) row.append(el("span", "tag", "BOT"));
      row.append(el("span", "desc", item.bot ? "the bot: it answers mentions" : ""));
    }
    row.onmousedown = e => { e.preventDefault(); S.suggest.index = i; acceptSuggestion(); };
    box.append(row);
  });
}

function acceptSuggestion() {
  const {items, index, kind} = S.suggest;
  const item = items[index];
  if (!item) return;
  const input = $("#input");
  if (kind === "command") {
    input.value = "";
    setMode({kind: "command", entry: item});
  } else {
    const pos = input.selectionStart;
    const before = input.value.slice(0, pos).replace(/@[\w.-]*$/, "@" + item.username + " ");
    input.value = before + input.value.slice(pos);
    input.setSelectionRange(before.length, before.length);
    input.focus();
  }
  S.suggest = {items: [], index: 0, kind: null};
  renderSuggestions();
}

function buildCommandForm(entry) {
  const form = $("#command-form");
  form.textContent = "";
  form.append(el("span", "command-chip", "/" + entry.label));
  for (const o of entry.options) {
    const wrap = el("span", "option" + (o.required ? " required" : ""));
    const label = el("label", "", o.name);
    let field;
    const pick = choices => {
      field = el("select");
      if (!o.required) field.append(el("option", "", ""));
      for (const [value, text] of choices) { const opt = el("option", "", text); opt.value = value; field.append(opt); }
    };
    if (o.choices && o.choices.length) pick(o.choices.map(c => [String(c.value), c.name]));
    else if (o.type === 5) pick([["true", "true"], ["false", "false"]]);
    else if (o.type === 6) pick([...S.members.values()].filter(m => m.member).map(m => [m.id, m.username]));
    else if (o.type === 7) pick([...S.channels.values()].filter(c => c.type === 0).map(c => [c.id, "#" + c.name]));
    else {
      field = el("input");
      field.type = o.type === 4 || o.type === 10 ? "number" : "text";
      field.placeholder = o.description || OPTION_TYPES[o.type] || "";
    }
    field.dataset.option = o.name;
    field.title = o.description || "";
    field.onkeydown = e => {
      if (e.key === "Enter") { e.preventDefault(); submit(); }
      if (e.key === "Escape") setMode(null);
    };
    wrap.append(label, field);
    form.append(wrap);
  }
  const first = form.querySelector("input, select");
  (first || $("#send")).focus();
}

function commandOptions(entry) {
  const values = [];
  for (const o of entry.options) {
    const field = $(`#command-form [data-option="${o.name}"]`);
    const raw = field ? field.value.trim() : "";
    if (!raw) {
      if (o.required) throw new Error(`/${entry.label}: ${o.name} is required`);
      continue;
    }
    let value = raw;
    if (o.type === 4) value = parseInt(raw, 10);
    if (o.type === 10) value = parseFloat(raw);
    if (o.type === 5) value = raw === "true";
    if ((o.type === 4 || o.type === 10) && Number.isNaN(value)) throw new Error(`${o.name} must be a number`);
    values.push({name: o.name, type: o.type, value});
  }
  if (entry.path.length === 1) return [{name: entry.path[0], type: 1, options: values}];
  if (entry.path.length === 2) return [{name: entry.path[0], type: 2, options: [{name: entry.path[1], type: 1, options: values}]}];
  return values;
}

function withMentionIds(text) {
  const users = [...S.members.values()].sort((a, b) => b.username.length - a.username.length);
  for (const u of users) text = text.replace(new RegExp("@" + escRe(u.username) + "(?![\\w.-])", "g"), `<@${u.id}>`);
  return text;
}

async function submit() {
  if (!S.current || !S.author) return;
  const mode = S.mode;
  const input = $("#input");
  try {
    if (mode && mode.kind === "command") {
      const options = commandOptions(mode.entry);
      await api("POST", "interactions", {channel_id: S.current, user_id: S.author, name: mode.entry.name, options});
      setMode(null);
      return;
    }
    const content = withMentionIds(input.value.trim());
    if (!content) return;
    if (mode && mode.kind === "edit") {
      await api("PATCH", `messages/${mode.id}`, {content});
    } else {
      const body = {channel_id: S.current, author_id: S.author, content};
      if (mode && mode.kind === "reply") body.reply_to_id = mode.id;
      await api("POST", "messages", body);
    }
    input.value = "";
    autosize();
    setMode(null);
  } catch (err) {
    if (!$("#toast").hidden) return;  // api() said it already
    toast(err.message);
  }
}

function autosize() {
  const input = $("#input");
  input.style.height = "auto";
  input.style.height = Math.min(200, input.scrollHeight) + "px";
}

function setupComposer() {
  const input = $("#input");
  input.addEventListener("input", () => { autosize(); updateSuggestions(); });
  input.addEventListener("click", updateSuggestions);
  input.addEventListener("blur", () => setTimeout(() => { S.suggest.items = []; renderSuggestions(); }, 150));
  input.addEventListener("keydown", e => {
    const open = S.suggest.items.length > 0;
    if (open && (e.key === "ArrowDown" || e.key === "ArrowUp")) {
      e.preventDefault();
      const n = S.suggest.items.length;
      S.suggest.index = (S.suggest.index + (e.key === "ArrowDown" ? 1 : n - 1)) % n;
      renderSuggestions();
    } else if (open && (e.key === "Enter" || e.key === "Tab")) {
      e.preventDefault();
      acceptSuggestion();
    } else if (e.key === "Escape") {
      if (open) { S.suggest.items = []; renderSuggestions(); } else setMode(null);
    } else if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      submit();
    }
  });
  $("#composer").addEventListener("submit", e => { e.preventDefault(); submit(); });
  $("#mode-cancel").onclick = () => { if (S.mode && S.mode.kind === "edit") $("#input").value = ""; setMode(null); };
  $("#author").onchange = e => { S.author = e.target.value; renderMessages(); };
  $("#new-member").addEventListener("submit", async e => {
    e.preventDefault();
    const name = $("#new-member-name").value.trim();
    if (!name) return;
    try {
      const user = await api("POST", "members", {username: name});
      $("#new-member-name").value = "";
      S.author = user.id;
      toast(`${name} joined`, "info");
    } catch (err) { /* said */ }
  });
}

// --- health ---------------------------------------------------------------------------------

function renderHealth() {
  const h = S.health;
  if (!h) return;
  const badge = $("#healthz");
  badge.className = "badge " + (h.healthy ? "ok" : "bad");
  badge.textContent = h.healthy ? "healthz 200" : "healthz 503";
  $("#health-reason").textContent = h.reason || "";
  const sup = h.supervisor || {};
  $("#supervisor-line").textContent = sup.pid ? `supervisor pid ${sup.pid} · up ${Math.round(sup.uptime_s)} s · ${sup.rss_mb} MB` : "";
  const body = $("#services tbody");
  for (const s of h.services || []) {
    let row = body.querySelector(`tr[data-service="${s.name}"]`);
    if (!row) row = serviceRow(s.name, body);
    const state = row.querySelector(".state");
    if (state.textContent !== s.state) {
      row.classList.remove("changed");
      void row.offsetWidth;
      if (state.textContent) row.classList.add("changed");
    }
    state.textContent = s.state;
    state.className = "state " + s.state;
    state.title = [s.reason, s.last_exit && `last exit: ${s.last_exit}`].filter(Boolean).join("\n");
    row.querySelector(".crit").hidden = !s.critical;
    row.querySelector(".pid").textContent = s.pid || "–";
    row.querySelector(".restarts").textContent = s.restarts;
    row.querySelector(".rss").textContent = s.rss_mb == null ? "–" : `${Math.round(s.rss_mb)} MB`;
    row.querySelector(".kill").disabled = !s.pid;
    row.querySelector(".restart").textContent = ["FATAL", "EXITED"].includes(s.state) ? "start" : "restart";
    // One dot per channel to a peer, named when its breaker is not closed.
    const breakers = row.querySelector(".breakers");
    breakers.textContent = "";
    const channels = s.channels || [];
    if (channels.length) breakers.append(el("span", "", "breakers"));
    for (const ch of channels) {
      const b = el("span", "breaker " + ch.breaker, ch.breaker === "closed" ? "" : `${ch.peer} ${ch.breaker.replace("_", "-")}`);
      b.title = `to ${ch.peer}: breaker ${ch.breaker} · sent ${ch.sent} · failed ${ch.failed} · unacked ${ch.unacked}`;
      breakers.append(b);
    }
  }
  const links = $("#links");
  if (h.metrics_url && !links.dataset.url) {
    links.dataset.url = h.metrics_url;
    links.innerHTML = `Prometheus: <a href="${esc(h.metrics_url)}" target="_blank">${esc(h.metrics_url)}</a> · ` +
      `<a href="${esc(h.metrics_url.replace(/\/metrics$/, "/healthz"))}" target="_blank">/healthz</a>`;
  }
  renderChaos();
}

function serviceRow(name, body) {
  const row = el("tr");
  row.dataset.service = name;
  row.innerHTML = `<td><span class="svc"></span><span class="crit" title="critical: the supervisor stops if it goes FATAL">★</span><div class="breakers"></div></td>` +
    `<td><span class="state"></span></td><td class="num pid"></td><td class="num restarts"></td><td class="num rss"></td>` +
    `<td class="row-actions"><button type="button" class="kill" title="SIGKILL its process">kill -9</button> <button type="button" class="restart" title="As run.py restart">restart</button></td>`;
  row.querySelector(".svc").textContent = name;
  row.querySelector(".kill").onclick = () => api("POST", `services/${name}/kill`)
    .then(r => toast(`${name} killed (pid ${r.pid})`, "info")).catch(() => {});
  row.querySelector(".restart").onclick = () => api("POST", `services/${name}/restart`)
    .then(r => toast(r.detail, "info")).catch(() => {});
  body.append(row);
  return row;
}

function renderChaos() {
  const c = S.chaos;
  const btn = $("#chaos");
  const running = !!(c && c.running);
  btn.classList.toggle("running", running);
  btn.textContent = running ? "Stop the chaos" : "Kill a random one every 2 s for 30 s";
  const text = $("#chaos-state");
  if (!c || !c.kills) { text.textContent = ""; return; }
  const left = running ? Math.max(0, Math.round(c.until - serverNow())) : 0;
  const kills = c.kills.length;
  text.textContent = running ? `${kills} killed so far, ${left} s left` : kills ? `last run: ${kills} services killed` : "";
}

function onHistory() {
  renderLog();
  renderMessages();
}

function renderLog() {
  const box = $("#event-log");
  box.textContent = "";
  for (const n of incidents().reverse().slice(0, 60)) {
    const li = el("li", n.kind);
    li.dataset.service = n.service;
    li.append(el("time", "", clock(n.t)), el("b", "", n.service), " ");
    li.append(n.kind === "crash" ? `went down: ${n.text}` : `RUNNING again after ${n.downtime.toFixed(2)} s`);
    box.append(li);
  }
}

const STATE_COLORS = {RUNNING: "#23a55a", STARTING: "#f0b232", BACKOFF: "#f0b232", STOPPING: "#80848e", STOPPED: "#4e5058", EXITED: "#f23f43", FATAL: "#f23f43"};

function drawTimeline() {
  const svg = $("#timeline");
  const h = S.health;
  if (!h || !h.services) return;
  const names = h.services.map(s => s.name);
  const W = svg.clientWidth || 360, rowH = 16, labelW = 74, top = 4;
  const H = top + (names.length + 1) * rowH + 18;
  const now = serverNow(), from = now - TIMELINE_S;
  const x = t => labelW + ((W - labelW - 6) * (Math.max(t, from) - from)) / TIMELINE_S;
  const parts = [];
  names.forEach((name, row) => {
    const y = top + row * rowH;
    parts.push(`<text x="4" y="${y + 11}">${esc(name)}</text>`);
    const changes = S.history.filter(c => c.service === name);
    let state = changes.length ? changes[0].from : (h.services[row] || {}).state;
    let start = from;
    for (const c of changes) {
      if (c.t > from) {
        parts.push(`<rect x="${x(start)}" y="${y + 2}" width="${Math.max(0.8, x(c.t) - x(start))}" height="${rowH - 5}" fill="${STATE_COLORS[state] || "#4e5058"}"><title>${state}</title></rect>`);
        start = c.t;
      }
      state = c.to;
    }
    parts.push(`<rect x="${x(start)}" y="${y + 2}" width="${Math.max(0.8, x(now) - x(start))}" height="${rowH - 5}" fill="${STATE_COLORS[state] || "#4e5058"}"><title>${state}</title></rect>`);
    for (const k of S.kills) {
      if (k.service === name && k.t > from) {
        const kx = x(k.t);
        parts.push(`<path d="M${kx - 4} ${y} L${kx + 4} ${y} L${kx} ${y + 7} Z" fill="#fff"><title>kill -9 ${esc(name)} (${k.by})</title></path>`);
      }
    }
  });
  const my = top + names.length * rowH;
  parts.push(`<text x="4" y="${my + 11}">messages</text>`);
  S.arrivals = S.arrivals.filter(a => a.t > now - 2 * TIMELINE_S);
  for (const a of S.arrivals) {
    if (a.t > from) parts.push(`<rect x="${x(a.t) - 0.75}" y="${my + 2}" width="1.5" height="${rowH - 5}" fill="${a.bot ? "#a78bfa" : "#00a8fc"}"/>`);
  }
  const axis = my + rowH + 10;
  for (const s of [60, 45, 30, 15, 0]) {
    parts.push(`<text x="${x(now - s) - (s ? 8 : 18)}" y="${axis}">${s ? "-" + s + " s" : "now"}</text>`);
  }
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.style.height = H + "px";
  svg.innerHTML = parts.join("");
}

function setupHealth() {
  $("#chaos").onclick = () => {
    const running = S.chaos && S.chaos.running;
    api(running ? "DELETE" : "POST", "chaos", running ? undefined : {every_s: 2, for_s: 30})
      .then(c => { S.chaos = c; renderChaos(); }).catch(() => {});
  };
  setInterval(() => { drawTimeline(); renderChaos(); }, 500);
}

setupComposer();
setupHealth();
connect();

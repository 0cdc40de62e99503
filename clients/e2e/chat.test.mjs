// The web chat end to end, in a real browser (Debian's chromium, driven by
// playwright-core) against a real cluster: the API serving the built app
// and two gateways over real Postgres and Redis. Alice's page is pinned to
// gateway 1 and Bob's to gateway 2 (each falls back to the other), so
// every live event crosses the Redis backplane. Screenshots of the chat
// and of the open notification center are written to artifacts/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { dirname, join, resolve } from "node:path";
import { createWriteStream, mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { RECOVERY_WINDOW, startCluster } from "./cluster.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../..");
const artifacts = join(here, "artifacts");
/** Longest any one expected change may take to show (debug builds, 2 cores, a reconnect's backoff). */
const STEP_MS = 20_000;

let cluster;
let browser;
const pages = {};

/** Flags for a root, sandboxed-CI chromium with a closed network (see the machine notes). */
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function openAs(name, token, gatewayOrder, communityId) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error(`[${name} page error]`, e));
  // Every page's console, for the artifacts (the SDK reports its errors there).
  const log = createWriteStream(join(artifacts, `browser-${name}.log`), { flags: "a" });
  page.on("console", (m) => log.write(`${new Date().toISOString()} ${m.type()} ${m.text()}\n`));
  page.historyFills = [];
  page.on("request", (r) => {
    if (r.url().includes("/api/messages-realtime?") && r.url().includes("after=")) page.historyFills.push(r.url());
  });
  const gateways = gatewayOrder.map((g) => g.url).join(",");
  const query = `gateway=${encodeURIComponent(gateways)}&community=${encodeURIComponent(communityId)}`;
  await page.goto(`${cluster.apiUrl}/?${query}#token=${token}`);
  await page.getByTestId("connection-dot").and(page.locator('[data-state="open"]')).waitFor({ timeout: STEP_MS });
  return page;
}

/** The community's chat is open (`?community=` selects it; the sidebar lists it). */
async function openCommunity(page, communityId) {
  await page.locator(`[data-community-id="${communityId}"]`).first().waitFor({ timeout: STEP_MS });
  await page.getByRole("log", { name: "Messages" }).waitFor({ timeout: STEP_MS });
}

/** The composer (its label is "Message"; the log is "Messages"). */
const composer = (page) => page.getByRole("textbox", { name: "Message", exact: true });

/** Messages shown on a page, in display order: `{seq, text}`. */
async function shown(page) {
  return await page.getByTestId("message").evaluateAll((els) =>
    els.map((e) => ({ seq: Number(e.getAttribute("data-seq")), text: e.textContent ?? "" })),
  );
}

/** Waits until `page` shows a message containing `text`. */
async function seeMessage(page, text) {
  await page.getByTestId("message").filter({ hasText: text }).first().waitFor({ timeout: STEP_MS });
}

/** Every content in `expected` shown exactly once, all in ascending seq order. */
async function assertExactlyOnceInOrder(page, expected, who) {
  const list = await shown(page);
  const seqs = list.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i] > seqs[i - 1], `${who}: seqs not strictly ascending: ${seqs.join(",")}`);
  }
  for (const text of expected) {
    const n = list.filter((m) => m.text.includes(text)).length;
    assert.equal(n, 1, `${who}: "${text}" shown ${n} times`);
  }
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  cluster = await startCluster({
    binDir: process.env.CHORUS_BIN_DIR ?? join(root, "target/debug"),
    webDir: process.env.CHORUS_WEB_DIR ?? join(root, "clients/web/dist"),
    logDir: artifacts,
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: CHROMIUM_ARGS,
  });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

test("two users on two gateways chat, type, mention, moderate and survive gateway deaths", async () => {
  const run = Math.random().toString(36).slice(2, 8);
  const users = {
    alice: { id: `alice_${run}`, name: "Alice" },
    bob: { id: `bob_${run}`, name: "Bob" },
    mod: { id: `mod_${run}`, name: "Moderator", role: "official" },
  };
  for (const u of Object.values(users)) u.token = await cluster.token(u.id, u.name, u.role);
  const communityName = `e2e ${run}`;
  const community = await cluster.http(users.alice.token, "POST", "/api/communities", { name: communityName });
  await cluster.http(users.alice.token, "POST", `/api/communities/${community.id}/members`, { userId: users.bob.id });
  await cluster.http(users.mod.token, "POST", `/api/communities/${community.id}/join`);

  const [gw1, gw2] = cluster.gateways;
  pages.alice = await openAs("alice", users.alice.token, [gw1, gw2], community.id);
  pages.bob = await openAs("bob", users.bob.token, [gw2, gw1], community.id);
  await openCommunity(pages.alice, community.id);
  await openCommunity(pages.bob, community.id);
  const sent = [];

  // Chat through the UI, both ways.
  const send = async (page, text) => {
    const box = composer(page);
    await box.fill(text);
    await box.press("Enter");
    sent.push(text);
  };
  await send(pages.alice, `hello bob ${run}`);
  await seeMessage(pages.bob, `hello bob ${run}`);
  await send(pages.bob, `hi alice ${run}`);
  await seeMessage(pages.alice, `hi alice ${run}`);

  // Typing dots appear for the other user, and go once the typer idles.
  const aliceTyping = pages.alice.getByTestId("typing-indicator");
  await composer(pages.bob).pressSequentially("typing…", { delay: 30 });
  await aliceTyping.filter({ hasText: "Bob" }).waitFor({ timeout: STEP_MS });
  await pages.alice.waitForFunction(
    () => !document.querySelector('[data-testid="typing-indicator"]')?.textContent?.includes("Bob"),
    null,
    { timeout: STEP_MS },
  );
  await composer(pages.bob).fill("");

  // A mention lights Bob's bell; he opens it, marks it read, the badge goes.
  await send(pages.alice, `@${users.bob.id} look at this ${run}`);
  await seeMessage(pages.bob, `look at this ${run}`);
  const bell = pages.bob.getByRole("button", { name: /^Notifications/ });
  await pages.bob.getByTestId("unread-badge").waitFor({ timeout: STEP_MS });
  await bell.click();
  const panel = pages.bob.getByRole("dialog", { name: "Notifications" });
  const item = panel.getByTestId("notification").filter({ hasText: "mention" }).first();
  await item.waitFor({ timeout: STEP_MS });
  assert.equal(await item.getAttribute("data-read"), "false");
  await pages.bob.screenshot({ path: join(artifacts, "notifications.png") });
  await item.getByRole("button", { name: "Mark read" }).click();
  await panel.locator('[data-testid="notification"][data-read="true"]').first().waitFor({ timeout: STEP_MS });
  await pages.bob.getByTestId("unread-badge").waitFor({ state: "detached", timeout: STEP_MS });
  await pages.bob.keyboard.press("Escape");
  await panel.waitFor({ state: "hidden", timeout: STEP_MS });

  // An official deletes Alice's message: it disappears for both.
  const doomed = `delete me ${run}`;
  await send(pages.alice, doomed);
  sent.pop();
  // Shown everywhere first, so its disappearance below means something.
  for (const who of ["alice", "bob"]) await seeMessage(pages[who], doomed);
  pages.mod = await openAs("moderator", users.mod.token, [gw1, gw2], community.id);
  await openCommunity(pages.mod, community.id);
  const doomedRow = pages.mod.getByTestId("message").filter({ hasText: doomed });
  await doomedRow.hover({ timeout: STEP_MS });
  await doomedRow.getByRole("button", { name: "Delete message" }).click();
  await pages.mod.getByRole("dialog").getByRole("button", { name: "Delete", exact: true }).click();
  for (const who of ["alice", "bob", "mod"]) {
    await pages[who].getByTestId("message").filter({ hasText: doomed }).waitFor({ state: "detached", timeout: STEP_MS });
  }

  // Gateway 1 dies with Alice (and the moderator) on it; Bob keeps
  // talking, more than the recovery window: Alice's page reconnects to
  // gateway 2, is told `recovered: false` and fills the gap from the HTTP
  // history. Every message once, in order.
  await gw1.kill();
  for (let i = 0; i < RECOVERY_WINDOW + 1; i++) {
    const text = `while alice was away ${i} ${run}`;
    await cluster.http(users.bob.token, "POST", "/api/messages-realtime", { communityId: community.id, content: text });
    sent.push(text);
  }
  await seeMessage(pages.alice, `while alice was away ${RECOVERY_WINDOW} ${run}`);
  assert.ok(pages.alice.historyFills.length > 0, "Alice's gap was filled from the HTTP history (recovered: false)");
  await pages.alice.getByTestId("connection-dot").and(pages.alice.locator('[data-state="open"]')).waitFor({ timeout: STEP_MS });
  await send(pages.alice, `back on gateway 2 ${run}`);
  await seeMessage(pages.bob, `back on gateway 2 ${run}`);

  // Then gateway 2, where both pages are now, dies while gateway 1 comes
  // back; one message in the outage, within the window: replayed on rejoin.
  await gw1.start();
  await gw2.kill();
  const during = `while gateway 2 was down ${run}`;
  await cluster.http(users.alice.token, "POST", "/api/messages-realtime", { communityId: community.id, content: during });
  sent.push(during);
  for (const who of ["alice", "bob"]) await seeMessage(pages[who], during);
  await send(pages.bob, `bob resumed ${run}`);
  await seeMessage(pages.alice, `bob resumed ${run}`);

  for (const who of ["alice", "bob"]) await assertExactlyOnceInOrder(pages[who], sent, who);
  await pages.alice.screenshot({ path: join(artifacts, "chat.png") });
});

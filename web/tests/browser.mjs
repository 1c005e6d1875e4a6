// The dashboard in a real browser (Debian's Chromium, driven by
// playwright-core; no browser download) against a running control plane
// with a real agent. e2e/dashboard_test.go starts the platform and runs this
// with WRENN_BASE_URL, CHROMIUM, ARTIFACTS, WRENN_ADMIN_EMAIL,
// WRENN_ADMIN_PASSWORD, WRENN_FAKE_GITHUB_URL and WRENN_FAKE_GITHUB_EMAIL. Any console error, page error, failed request or
// error answer outside the steps that expect one fails the run. The last
// line of output is `RESULT {json}` with the measurements.
import { chromium } from 'playwright-core';
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { bridgeLoopback, listenReachable } from './netns-bridge.mjs';

const base = must('WRENN_BASE_URL');
const artifacts = must('ARTIFACTS');
const adminEmail = must('WRENN_ADMIN_EMAIL');
const adminPassword = must('WRENN_ADMIN_PASSWORD');
const baseHost = new URL(base).host;
// The fake GitHub the control plane is configured with (e2e starts it on loopback).
const githubURL = must('WRENN_FAKE_GITHUB_URL');
const githubEmail = must('WRENN_FAKE_GITHUB_EMAIL');
const allowedHosts = new Set([baseHost, new URL(githubURL).host]);
mkdirSync(artifacts, { recursive: true });

function must(name) {
	const v = process.env[name];
	if (!v) throw new Error(`${name} is not set`);
	return v;
}

const problems = [];
const foreign = [];
const networkChanged = [];
/** While set, problems matching it are expected (the step provokes them). */
let expected = null;

await bridgeLoopback();
const browser = await chromium.launch({
	executablePath: must('CHROMIUM'),
	headless: true,
	// Nothing resolves but *.localhost (sandbox ports through the proxy, on
	// the control plane's listener): the test server is addressed by IP.
	args: ['--no-sandbox', `--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE ${new URL(base).hostname}`, '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-default-apps']
});
const results = {};
let step = 'start';

// A webhook receiver on loopback for the channels steps (the control plane
// reaches it: `wrenn dev` sets WRENN_CHANNELS_ALLOW_PRIVATE=true). It keeps
// every request and answers 200.
const received = [];
const receiver = createServer((req, res) => {
	const chunks = [];
	req.on('data', (c) => chunks.push(c));
	req.on('end', () => {
		received.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks) });
		res.writeHead(200).end();
	});
});
const receiverURL = `${await listenReachable(receiver)}/hook`;

/** Whether one of the v1= signatures of X-WRENN-SIGNATURE is body's under secret. */
function signedWith(r, secret) {
	const parts = String(r.headers['x-wrenn-signature'] ?? '').split(',');
	const t = parts.find((p) => p.startsWith('t='))?.slice(2);
	if (!t) return false;
	const want = createHmac('sha256', secret).update(`${t}.`).update(r.body).digest();
	return parts.filter((p) => p.startsWith('v1=')).some((p) => {
		const got = Buffer.from(p.slice(3), 'hex');
		return got.length === want.length && timingSafeEqual(got, want);
	});
}

/** The first request the receiver got of an event type, waiting up to ms for it. */
async function receivedEvent(type, ms = 30000) {
	for (const t0 = Date.now(); Date.now() - t0 < ms; await new Promise((r) => setTimeout(r, 200))) {
		const r = received.find((x) => x.headers['x-wrenn-event-type'] === type);
		if (r) return r;
	}
	throw new Error(`the webhook receiver got no ${type} in ${ms} ms (got: ${received.map((x) => x.headers['x-wrenn-event-type']).join(', ') || 'nothing'})`);
}

function watch(page, who) {
	const note = (what) => {
		if (expected && expected.test(what)) return;
		// Chromium cuts requests in flight when the machine's interfaces
		// change, which the VM and network tests running beside this one do
		// all the time (their tap and veth devices): the environment's
		// doing, not the dashboard's. A step still fails if its page did
		// not recover; the count is printed.
		if (what.includes('net::ERR_NETWORK_CHANGED')) {
			networkChanged.push(`[${who}: ${step}] ${what}`);
			return;
		}
		problems.push(`[${who}: ${step}] ${what}`);
	};
	page.on('console', (m) => {
		if (m.type() === 'error') note(`console error: ${m.text()}`);
	});
	page.on('pageerror', (e) => note(`page error: ${e.message}`));
	page.on('requestfailed', (r) => {
		// A navigation cancels the page's requests in flight; that is no failure.
		if (r.failure()?.errorText === 'net::ERR_ABORTED') return;
		note(`request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText ?? ''}`);
	});
	page.on('response', (r) => {
		if (r.status() >= 400) note(`HTTP ${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`);
	});
}

async function newPage(who, viewport = { width: 1440, height: 900 }) {
	const context = await browser.newContext({ viewport, acceptDownloads: true, baseURL: base });
	// Only the control plane under test (and its fake GitHub); every other request is refused and recorded.
	await context.route('**/*', (route) => {
		const u = new URL(route.request().url());
		if (allowedHosts.has(u.host) || u.protocol === 'blob:' || u.protocol === 'data:') return route.continue();
		foreign.push(u.href);
		return route.abort('blockedbyclient');
	});
	const page = await context.newPage();
	page.setDefaultTimeout(30000);
	watch(page, who);
	return { context, page };
}

/** The dashboard's main navigation (pages have links of the same names). */
const nav = (page) => page.getByRole('navigation', { name: 'Dashboard' });

async function shot(page, name) {
	await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

async function run(name, f) {
	step = name;
	const t0 = Date.now();
	await f();
	console.log(`ok   ${name} (${Date.now() - t0} ms)`);
}

let exitCode = 0;
try {
	const email = `browser-${randomBytes(4).toString('hex')}@example.com`;
	const password = 'browser test passphrase';
	const { context, page } = await newPage('user');

	await run('sign up', async () => {
		await page.goto('/signup');
		await shot(page, 'signup');
		await page.getByLabel('Name').fill('Browser Test');
		await page.getByLabel('Email').fill(email);
		await page.getByLabel('Password').fill(password);
		await page.getByRole('button', { name: 'Sign up' }).click();
		await page.waitForURL('**/dashboard/capsules/list');
		const cookies = await context.cookies();
		const session = cookies.find((c) => c.name === 'wrenn_session');
		if (!session || !session.httpOnly || session.sameSite !== 'Strict') throw new Error(`session cookie: ${JSON.stringify(session)}`);
		const fromPage = await page.evaluate(() => document.cookie);
		if (fromPage.includes('wrenn_session')) throw new Error('the session cookie is readable by the page');
	});

	await run('first signed-in page interactive', async () => {
		const t0 = Date.now();
		await page.goto('/dashboard/capsules/list');
		const create = page.getByRole('button', { name: 'Create your first capsule' });
		await create.waitFor({ state: 'visible' });
		await page.waitForFunction(() => document.readyState === 'complete');
		results.interactive_ms = Date.now() - t0;
		results.navigation = await page.evaluate(() => {
			const n = performance.getEntriesByType('navigation')[0];
			return { dom_content_loaded_ms: Math.round(n.domContentLoadedEventEnd), load_ms: Math.round(n.loadEventEnd) };
		});
		await create.focus();
		if (!(await create.evaluate((el) => el === document.activeElement))) throw new Error('the create button does not take focus');
		await shot(page, 'capsules-empty');
	});

	let capsuleID = '';
	await run('create a capsule', async () => {
		await page.getByRole('button', { name: 'Create your first capsule' }).click();
		const dialog = page.getByRole('dialog', { name: 'Create a capsule' });
		await dialog.getByLabel('Metadata').fill('purpose=browser-test');
		await shot(page, 'capsule-create-dialog');
		await dialog.getByRole('button', { name: 'Create' }).click();
		await page.waitForURL(/\/dashboard\/capsules\/sb-[a-z0-9]+/, { timeout: 180000 });
		capsuleID = new URL(page.url()).pathname.split('/').pop();
		await page.locator('h1 .badge', { hasText: 'running' }).waitFor({ timeout: 180000 });
		await page.getByText('purpose=browser-test').waitFor();
		await shot(page, 'capsule-overview');
	});

	await run('terminal: echo hi', async () => {
		await page.getByRole('tab', { name: 'Terminal' }).click();
		await page.getByText('Connected', { exact: true }).waitFor({ timeout: 60000 });
		await page.locator('.xterm').click();
		// Type only once the prompt is drawn: the shell's line editor asks
		// for the cursor position as it prints it, and keys typed before
		// the terminal's answer arrive put that answer on the command line.
		await page.waitForFunction(
			() => Array.from(document.querySelectorAll('.xterm-rows > div')).some((r) => /#$/.test(r.textContent?.trim() ?? '')),
			undefined,
			{ timeout: 30000 }
		);
		await page.keyboard.type('echo hi\n');
		await page.waitForFunction(
			() => Array.from(document.querySelectorAll('.xterm-rows > div')).some((r) => r.textContent?.trim() === 'hi'),
			undefined,
			{ timeout: 30000 }
		);
		await shot(page, 'capsule-terminal');
	});

	await run('terminal: resize', async () => {
		const before = await page.locator('.xterm-rows > div').count();
		await page.setViewportSize({ width: 1440, height: 1200 });
		await page.locator('.term').evaluate((el) => (el.style.height = '40rem'));
		await page.waitForFunction((n) => document.querySelectorAll('.xterm-rows > div').length > n, before);
		await page.keyboard.type('stty size\n');
		const rows = await page.locator('.xterm-rows > div').count();
		await page.waitForFunction(
			(r) => Array.from(document.querySelectorAll('.xterm-rows > div')).some((d) => new RegExp(`^${r} \\d+$`).test(d.textContent?.trim() ?? '')),
			rows,
			{ timeout: 15000 }
		);
		await page.setViewportSize({ width: 1440, height: 900 });
	});

	await run('files: upload, download, mkdir, delete', async () => {
		await page.getByRole('tab', { name: 'Files' }).click();
		await page.locator('[data-dir="/"][aria-busy="false"]').waitFor();
		await page.getByLabel('Folder path').fill('/tmp');
		await page.getByRole('button', { name: 'Open', exact: true }).click();
		await page.locator('[data-dir="/tmp"][aria-busy="false"]').waitFor();
		const data = randomBytes(300 * 1024); // binary, not valid UTF-8
		await page.getByLabel('Upload files').setInputFiles({ name: 'upload.bin', mimeType: 'application/octet-stream', buffer: data });
		const row = page.locator('tr[data-entry="upload.bin"]');
		await row.waitFor();
		const [download] = await Promise.all([page.waitForEvent('download'), row.getByRole('button', { name: /Download/ }).click()]);
		const got = readFileSync(await download.path());
		if (!got.equals(data)) throw new Error(`downloaded ${got.length} bytes differ from the ${data.length} uploaded`);
		await page.getByLabel('New folder name').fill('made-in-browser');
		await page.getByRole('button', { name: 'New folder' }).click();
		const dirRow = page.locator('tr[data-entry="made-in-browser"]');
		await dirRow.waitFor();
		await shot(page, 'capsule-files');
		await dirRow.getByRole('button', { name: /Delete/ }).click();
		await dirRow.waitFor({ state: 'detached' });
	});

	// ---- Preview link: a web server in the guest, opened through the proxy ----
	await run('overview: preview link of a guest port', async () => {
		const csrf = (await context.cookies()).find((c) => c.name === 'wrenn_csrf')?.value ?? '';
		const started = await page.request.post(`${base}/v1/sandboxes/${capsuleID}/exec`, {
			headers: { 'X-CSRF-Token': csrf },
			data: { cmd: '/bin/sh', args: ['-c', 'mkdir -p /tmp/www && echo served-by-guest > /tmp/www/index.html && busybox httpd -p 8080 -h /tmp/www'], timeout_sec: 60 }
		});
		const exec = await started.json();
		if (started.status() !== 200 || exec.exit_code !== 0) throw new Error(`starting httpd in the guest: ${started.status()} ${JSON.stringify(exec)}`);

		// The tab list's keys (Tabs.svelte) move the selection, kept in the URL.
		await page.getByRole('tab', { name: 'Overview' }).click();
		for (const [key, name] of [['End', 'Metrics'], ['ArrowRight', 'Overview'], ['ArrowLeft', 'Metrics'], ['Home', 'Overview']]) {
			await page.keyboard.press(key);
			await page.waitForURL((u) => u.searchParams.get('tab') === name.toLowerCase());
			const tab = page.getByRole('tab', { name });
			if ((await tab.getAttribute('aria-selected')) !== 'true' || !(await tab.evaluate((el) => el === document.activeElement)))
				throw new Error(`${key} did not select and focus ${name}`);
		}
		const form = page.getByRole('region', { name: 'Open a port' });
		const create = form.getByRole('button', { name: 'Create preview link' });

		// envd's own port is refused, in words.
		await form.getByLabel('Port').fill('49983');
		expected = /HTTP 403 POST \/v1\/sandboxes\/[^/]+\/preview-urls|status of 403/;
		await create.click();
		const refused = form.getByRole('alert');
		await refused.filter({ hasText: '(port_not_allowed)' }).waitFor();
		const words = await refused.textContent();
		if (!/port 49983 is the sandbox agent's own/.test(words ?? '')) throw new Error(`the 403 says ${JSON.stringify(words)}`);
		expected = null;

		await form.getByLabel('Port').fill('8080');
		await create.click();
		const link = form.getByRole('link', { name: /^http:\/\/8080-/ });
		await link.waitFor();
		await refused.waitFor({ state: 'detached' });
		const href = new URL((await link.getAttribute('href')) ?? '');
		const want = `8080-${capsuleID}.localhost:${new URL(base).port}`;
		if (href.host !== want || !href.searchParams.get('wrenn_preview')) throw new Error(`preview URL ${href}, want one on ${want} with a token`);
		if ((await link.getAttribute('target')) !== '_blank' || !((await link.getAttribute('rel')) ?? '').split(' ').includes('noopener'))
			throw new Error('the preview link does not open in a new tab with rel=noopener');
		await shot(page, 'capsule-preview');

		// The link opens a new page of the same context: the token becomes a
		// cookie for that host and the guest's page is served.
		allowedHosts.add(href.host);
		const [opened] = await Promise.all([context.waitForEvent('page'), link.click()]);
		try {
			await opened.waitForURL(`${href.origin}/`);
			await opened.getByText('served-by-guest', { exact: true }).waitFor();
		} finally {
			await opened.close();
			allowedHosts.delete(href.host);
		}
	});

	await run('pause and resume', async () => {
		await page.getByRole('button', { name: 'Pause' }).click();
		await page.locator('h1 .badge', { hasText: 'paused' }).waitFor({ timeout: 120000 });
		await page.getByRole('button', { name: 'Resume' }).waitFor();
		await page.getByRole('button', { name: 'Resume' }).click();
		await page.locator('h1 .badge', { hasText: 'running' }).waitFor({ timeout: 120000 });
	});

	await run('capsules list and running badge', async () => {
		await nav(page).getByRole('link', { name: /Capsules/ }).click();
		const row = page.locator(`tr[data-capsule="${capsuleID}"]`);
		await row.locator('.badge', { hasText: 'running' }).waitFor();
		await row.getByText('purpose=browser-test').waitFor();
		await page.locator('nav .count', { hasText: '1' }).waitFor();
		await shot(page, 'capsules-list');
		await page.setViewportSize({ width: 375, height: 800 });
		await shot(page, 'capsules-list-375');
		const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
		if (overflow > 0) throw new Error(`the page is ${overflow}px wider than a 375px screen`);
		await page.setViewportSize({ width: 1440, height: 900 });
	});

	await run('API key shown once', async () => {
		await nav(page).getByRole('link', { name: 'API keys' }).click();
		await page.getByText('No API keys yet.').waitFor();
		await page.getByLabel('Key name').fill('from-browser');
		await page.getByRole('button', { name: 'Create key' }).click();
		const dialog = page.getByRole('dialog', { name: 'Your new API key' });
		const key = (await dialog.getByTestId('new-key').textContent())?.trim() ?? '';
		if (!/^wrn_[A-Za-z0-9_-]{32,}$/.test(key)) throw new Error(`shown key ${key}`);
		await shot(page, 'keys-created');
		await dialog.getByRole('button', { name: 'Done' }).click();
		await dialog.waitFor({ state: 'hidden' });
		await page.locator('tr[data-key="from-browser"]').waitFor();
		if ((await page.content()).includes(key)) throw new Error('the key is still on the page after the dialog closed');
		await page.reload();
		await page.locator('tr[data-key="from-browser"]').waitFor();
		if ((await page.content()).includes(key)) throw new Error('the key is shown again');
		const res = await fetch(`${base}/v1/sandboxes`, { headers: { 'X-API-Key': key } });
		if (res.status !== 200) throw new Error(`the shown key does not work: ${res.status}`);
		await shot(page, 'keys');
	});

	await run('team: rename', async () => {
		await nav(page).getByRole('link', { name: 'Team' }).click();
		await page.getByText(email).first().waitFor();
		await page.getByLabel('Team name').fill('Browser team');
		await page.getByRole('button', { name: 'Rename team' }).click();
		await page.getByRole('heading', { name: 'Team Browser team' }).waitFor();
		await shot(page, 'team');
	});

	await run('dark theme', async () => {
		await page.getByLabel('Theme').selectOption('dark');
		const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
		if (bg === 'rgb(247, 248, 247)') throw new Error('dark theme did not apply');
		await shot(page, 'team-dark');
		await page.getByLabel('Theme').selectOption('system');
	});

	// ---- Capsule stats, capsule metrics, audit log, channels (dasha) ----
	/** A screenshot at 375px wide, failing if the page is wider than that screen. */
	async function narrow(p, name) {
		await p.setViewportSize({ width: 375, height: 800 });
		await shot(p, name);
		const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
		await p.setViewportSize({ width: 1440, height: 900 });
		if (overflow > 0) throw new Error(`${name}: the page is ${overflow}px wider than a 375px screen`);
	}
	await run('capsule stats: charts with data, range in the URL', async () => {
		await nav(page).getByRole('link', { name: /Capsules/ }).click();
		await page.getByRole('navigation', { name: 'Capsules' }).getByRole('link', { name: 'Stats' }).click();
		await page.waitForURL('**/dashboard/capsules/stats');
		await page.getByRole('link', { name: 'Last 5 minutes' }).click();
		await page.waitForURL('**/dashboard/capsules/stats?range=5m');
		// The capsule has run for minutes: complete 10 s buckets count it.
		const running = page.locator('[data-chart="Capsules over time"]');
		await page.waitForFunction(
			() => {
				const el = document.querySelector('[data-chart="Capsules over time"]');
				return el && Number(el.getAttribute('data-points')) > 0 && Number(el.getAttribute('data-max')) >= 1 && el.querySelector('canvas')?.width > 0;
			},
			undefined,
			{ timeout: 60000 }
		);
		const reserved = page.locator('[data-chart="Reserved vCPUs and memory"]');
		if (Number(await reserved.getAttribute('data-max')) <= 0) throw new Error('the reserved chart has no data');
		await page.locator('[data-card="running"] .now', { hasText: /^1$/ }).waitFor();
		// A poll updates in place: nothing moves, no loading state again.
		const boxes = async () => Promise.all([running, reserved, page.locator('[data-card="memory"]')].map((l) => l.boundingBox()));
		const before = await boxes();
		await page.waitForResponse((r) => r.url().includes('/v1/sandboxes/stats?range=5m'), { timeout: 30000 });
		await page.waitForTimeout(200);
		if (JSON.stringify(await boxes()) !== JSON.stringify(before)) throw new Error(`the stats moved on a poll: ${JSON.stringify(before)} -> ${JSON.stringify(await boxes())}`);
		if (await page.getByText('Loading…').count()) throw new Error('a poll showed the loading state again');
		await shot(page, 'capsules-stats');
		// The charts take the theme's colours when it changes under them.
		await page.getByLabel('Theme').selectOption('dark');
		await page.waitForTimeout(300);
		await shot(page, 'capsules-stats-dark');
		await page.getByLabel('Theme').selectOption('system');
		await page.reload();
		await page.getByRole('link', { name: 'Last 5 minutes' }).and(page.locator('[aria-current="true"]')).waitFor();
		await narrow(page, 'capsules-stats-375');
	});

	await run('capsule metrics: charts with data', async () => {
		await page.goto(`/dashboard/capsules/${capsuleID}`);
		await page.getByRole('tab', { name: 'Metrics' }).click();
		await page.waitForFunction(
			() => {
				const el = document.querySelector('[data-chart="CPU and memory"]');
				return el && Number(el.getAttribute('data-points')) > 0 && Number(el.getAttribute('data-max')) > 0;
			},
			undefined,
			{ timeout: 90000 }
		);
		await shot(page, 'capsule-metrics');
	});

	await run('audit log: the earlier actions, filtered', async () => {
		await nav(page).getByRole('link', { name: 'Audit log' }).click();
		await page.locator(`tr[data-audit="sandbox.created"][data-resource="${capsuleID}"]`).waitFor();
		await page.locator('tr[data-audit="api_key.created"]').waitFor();
		await page.locator('tr[data-audit="team.renamed"]').waitFor();
		await shot(page, 'audit');
		await page.getByLabel('Resource', { exact: true }).selectOption('sandbox');
		await page.getByLabel('Action').fill('paused');
		await page.getByRole('button', { name: 'Apply filters' }).click();
		await page.waitForURL('**/dashboard/audit?resource_type=sandbox&action=paused');
		// The unfiltered rows stay until the filtered page answers: wait for it.
		await page.waitForFunction(
			(id) => {
				const rows = Array.from(document.querySelectorAll('tbody tr[data-audit]'));
				return rows.length > 0 && rows.every((r) => r.getAttribute('data-audit') === 'sandbox.paused') && rows.some((r) => r.getAttribute('data-resource') === id);
			},
			capsuleID,
			{ timeout: 15000 }
		);
		await page.getByRole('button', { name: 'Clear' }).click();
		await page.waitForURL('**/dashboard/audit');
		await page.locator('tr[data-audit="api_key.created"]').waitFor();
		await narrow(page, 'audit-375');
	});

	await run('channels: test a webhook, create, edit, deliveries, rotate', async () => {
		const secret = 'browser-test-signing-secret';
		await nav(page).getByRole('link', { name: 'Channels' }).click();
		await page.getByText('No channels yet.').waitFor();
		const form = page.getByRole('form', { name: 'Create a channel' });
		await form.getByLabel('Channel name').fill('browser-hook');
		await form.getByLabel('Provider').selectOption('webhook');
		await form.getByLabel('URL', { exact: true }).fill(receiverURL);
		await form.getByLabel('Signing secret (optional)').fill(secret);
		await form.getByLabel('Every event').uncheck();
		await form.getByLabel('Channels (channel.*)').check();
		// Test before saving: the receiver gets a signed channel.test.
		await form.getByRole('button', { name: 'Send a test' }).click();
		await form.getByRole('status').getByText('Test delivered: the endpoint answered 200.').waitFor();
		const test = await receivedEvent('channel.test');
		if (!signedWith(test, secret)) throw new Error(`the test send is not signed with the secret: ${test.headers['x-wrenn-signature']}`);
		await form.getByRole('button', { name: 'Create channel' }).click();
		const row = page.locator('tr[data-channel="browser-hook"]');
		await row.getByText('channel.*').waitFor();
		if ((await page.content()).includes(secret)) throw new Error('the secret is on the page after saving');
		await row.getByRole('button', { name: 'Test browser-hook' }).click();
		await row.getByRole('status').getByText('Test delivered: the endpoint answered 200.').waitFor();
		// Edit its events: the change is itself a channel event it gets.
		await row.getByRole('button', { name: 'Edit browser-hook' }).click();
		const edit = page.getByRole('dialog', { name: 'Edit browser-hook' });
		await edit.getByLabel('Capsules (sandbox.*)').check();
		await edit.getByRole('button', { name: 'Save' }).click();
		await edit.waitFor({ state: 'hidden' });
		await row.getByText('channel.*, sandbox.*').waitFor();
		const updated = await receivedEvent('channel.updated');
		if (!signedWith(updated, secret)) throw new Error('channel.updated is not signed with the secret');
		await row.getByRole('button', { name: 'Deliveries of browser-hook' }).click();
		const delivered = page.locator('tr[data-delivery="channel.updated"]', { has: page.locator('.badge', { hasText: 'delivered' }) });
		for (let i = 0; i < 30 && !(await delivered.count()); i++) {
			await page.waitForTimeout(500);
			await page.getByRole('button', { name: 'Refresh' }).click();
		}
		await delivered.waitFor();
		await shot(page, 'channels');
		// Rotate: an empty secret has one generated, shown once, signing from now on.
		await row.getByRole('button', { name: 'Rotate secrets of browser-hook' }).click();
		const rotate = page.getByRole('dialog', { name: 'Rotate the secrets of browser-hook' });
		await rotate.getByLabel('URL', { exact: true }).fill(receiverURL);
		await rotate.getByRole('button', { name: 'Replace config' }).click();
		const shown = page.getByRole('dialog', { name: "The webhook's signing secret" });
		const generated = ((await shown.getByTestId('channel-secret').textContent()) ?? '').trim();
		if (generated.length < 16) throw new Error(`generated secret ${generated}`);
		await shown.getByRole('button', { name: 'Done' }).click();
		await shown.waitFor({ state: 'hidden' });
		if ((await page.content()).includes(generated)) throw new Error('the generated secret is still on the page');
		const rotated = await receivedEvent('channel.config_rotated');
		if (!signedWith(rotated, generated) || !signedWith(rotated, secret)) throw new Error('channel.config_rotated is not signed with both the new and the old secret');
		await narrow(page, 'channels-375');
	});
	// ---- end of the dasha block ----

	await run('control plane down: banner, then recovery', async () => {
		await nav(page).getByRole('link', { name: 'API keys' }).click();
		await page.locator('tr[data-key="from-browser"]').waitFor();
		expected = /request failed|Failed to load resource|net::ERR_FAILED/;
		let probes = 0;
		await context.route(/\/(v1\/|health)/, (route) => {
			if (new URL(route.request().url()).pathname === '/health') probes++;
			return route.abort('connectionrefused');
		});
		await nav(page).getByRole('link', { name: 'Hosts' }).click();
		await page.getByText('The control plane is not answering').waitFor();
		await shot(page, 'cp-down');
		await page.waitForTimeout(3500);
		// Backoff: 1s then 2s; a tight loop would have probed many times.
		if (probes > 3) throw new Error(`${probes} health probes in 3.5s`);
		// "Retry now" probes at once, while the control plane is still down.
		const before = probes;
		await page.getByRole('button', { name: 'Retry now' }).click();
		for (let i = 0; i < 20 && probes === before; i++) await page.waitForTimeout(50);
		if (probes === before) throw new Error('Retry now sent no health probe');
		await context.unroute(/\/(v1\/|health)/);
		// The next backoff probe (at most 8s away now) clears the banner; a
		// click on "Retry now" here would race that probe removing the button.
		await page.getByText('The control plane is not answering').waitFor({ state: 'hidden', timeout: 20000 });
		expected = null;
	});

	await run('destroy the capsule', async () => {
		await nav(page).getByRole('link', { name: /Capsules/ }).click();
		const row = page.locator(`tr[data-capsule="${capsuleID}"]`);
		await row.getByRole('button', { name: 'Destroy' }).click();
		const dialog = page.getByRole('dialog', { name: 'Destroy this capsule?' });
		await dialog.getByRole('button', { name: 'Destroy' }).click();
		await row.waitFor({ state: 'detached', timeout: 120000 });
		await page.getByText('No capsules yet.').waitFor();
	});

	await run('expired session: sign in again, back to the page', async () => {
		await context.clearCookies();
		expected = /HTTP 401 GET \/v1\/(me|sandboxes)|status of 401/;
		await page.goto('/dashboard/hosts');
		await page.waitForURL('**/signin?next=%2Fdashboard%2Fhosts');
		expected = null;
		await shot(page, 'signin');
		await page.getByLabel('Email').fill(adminEmail);
		await page.getByLabel('Password').fill(adminPassword);
		await page.getByRole('button', { name: 'Sign in' }).click();
		await page.waitForURL('**/dashboard/hosts');
	});

	await run('hosts: create with the command, delete', async () => {
		await page.getByRole('heading', { name: 'Hosts' }).waitFor();
		await page.getByLabel('Host name').fill('browser-host');
		await page.getByLabel('Shared by all teams').check();
		await page.getByRole('button', { name: 'Add host' }).click();
		const dialog = page.getByRole('dialog', { name: 'Register the host' });
		const cmd = (await dialog.getByTestId('register-command').textContent()) ?? '';
		if (!cmd.includes('wrenn agent --register ') || !cmd.includes(`--cp-url ${base}`)) throw new Error(`registration command: ${cmd}`);
		await shot(page, 'hosts-created');
		await dialog.getByRole('button', { name: 'Done' }).click();
		const row = page.locator('tr[data-host="browser-host"]');
		await row.locator('.badge', { hasText: 'pending' }).waitFor();
		await shot(page, 'hosts');
		await row.getByRole('button', { name: /Delete/ }).click();
		await row.waitFor({ state: 'detached' });
	});

	await run('error in words', async () => {
		await nav(page).getByRole('link', { name: 'Team' }).click();
		expected = /HTTP 404 POST \/v1\/teams\/.*\/members|status of 404/;
		await page.getByLabel('Email').fill('nobody-here@example.com');
		await page.getByRole('button', { name: 'Add member' }).click();
		const alert = page.getByRole('alert');
		await alert.waitFor();
		const text = (await alert.textContent()) ?? '';
		if (text.includes('{') || !text.includes('Could not add the member')) throw new Error(`error shown as: ${text}`);
		expected = null;
	});

	await context.close();

	// ---- dashb: sign-in with GitHub, the admin area, template builds ----
	{
		const gh = await newPage('github');
		await run('sign in with GitHub', async () => {
			await gh.page.goto('/signin?next=%2Fdashboard%2Fkeys');
			const button = gh.page.getByRole('link', { name: 'Sign in with GitHub' });
			await button.waitFor();
			await shot(gh.page, 'signin-github');
			await button.click();
			// Control plane -> fake GitHub -> callback -> the dashboard's callback page -> next.
			await gh.page.waitForURL('**/dashboard/keys');
			if (gh.page.url().includes('oauth_code')) throw new Error(`the one-time code stayed in the URL: ${gh.page.url()}`);
			const session = (await gh.context.cookies()).find((c) => c.name === 'wrenn_session');
			if (!session || !session.httpOnly || session.sameSite !== 'Strict') throw new Error(`session cookie: ${JSON.stringify(session)}`);
			const who = await gh.page.evaluate(async () => (await (await fetch('/v1/me')).json()).user.email);
			if (who !== githubEmail) throw new Error(`signed in as ${who}, want ${githubEmail}`);
			await gh.page.getByRole('heading', { name: 'API keys' }).waitFor();
			if (await nav(gh.page).getByRole('link', { name: 'Admin' }).count()) throw new Error('a member sees the Admin link');
			await shot(gh.page, 'github-signed-in');
		});

		await run('a used one-time code is refused in words', async () => {
			expected = /HTTP 401 POST \/v1\/auth\/oauth\/exchange|status of 401/;
			await gh.page.goto('/auth/callback?next=%2Fdashboard%2Fkeys#oauth_code=not-a-real-code');
			const alert = gh.page.getByRole('alert');
			await alert.waitFor();
			const text = (await alert.textContent()) ?? '';
			if (text.includes('{') || !text.includes('invalid_oauth_code')) throw new Error(`error shown as: ${text}`);
			if (gh.page.url().includes('#')) throw new Error('the fragment was not cleared');
			await shot(gh.page, 'oauth-callback-error');
			expected = null;
		});

		await run('a failed provider callback is shown in words', async () => {
			await gh.page.goto('/v1/auth/oauth/github/callback?state=forged&code=x');
			await gh.page.waitForURL('**/auth/callback');
			const alert = gh.page.getByRole('alert');
			await alert.waitFor();
			const text = (await alert.textContent()) ?? '';
			if (text.includes('{') || !text.includes('invalid_oauth_state')) throw new Error(`error shown as: ${text}`);
		});

		await run('admin pages: members are not allowed', async () => {
			await gh.page.goto('/admin/templates');
			await gh.page.getByRole('heading', { name: 'Not allowed' }).waitFor();
			await shot(gh.page, 'admin-not-allowed');
		});
		await gh.context.close();

		const admin = await newPage('admin');
		const ap = admin.page;
		const templateName = `browser-${randomBytes(3).toString('hex')}`;
		let buildID = '';
		await run('admin: templates list', async () => {
			await ap.goto('/signin?next=%2Fdashboard%2Fcapsules%2Flist');
			await ap.getByLabel('Email').fill(adminEmail);
			await ap.getByLabel('Password').fill(adminPassword);
			await ap.getByRole('button', { name: 'Sign in' }).click();
			await ap.waitForURL('**/dashboard/capsules/list');
			await nav(ap).getByRole('link', { name: 'Admin' }).click();
			await ap.waitForURL('**/admin/templates');
			await ap.getByRole('navigation', { name: 'Admin' }).getByRole('link', { name: 'Templates' }).waitFor();
			await ap.locator('tr[data-template="minimal"]').waitFor();
			await shot(ap, 'admin-templates');
		});

		await run('admin: build a template and see its steps complete', async () => {
			const logStreams = [];
			const listCalls = [];
			ap.on('request', (r) => {
				const path = new URL(r.url()).pathname;
				if (/^\/v1\/admin\/builds\/[^/]+\/logs$/.test(path)) logStreams.push(path);
				if (path === '/v1/admin/builds' && r.method() === 'GET') listCalls.push(Date.now());
			});
			await ap.getByRole('button', { name: 'Create template' }).click();
			const dialog = ap.getByRole('dialog', { name: 'Create a template' });
			await dialog.getByLabel('Template name').fill(templateName);
			await dialog.getByLabel('Recipe').fill('echo hello > /hello\ncat /hello');
			await dialog.getByLabel('Snapshot').check();
			await dialog.getByLabel('Image').check();
			await shot(ap, 'admin-create-template');
			await dialog.getByRole('button', { name: 'Build template' }).click();
			await ap.waitForURL('**/admin/templates?tab=builds');
			const card = ap.locator('article[data-build]', { hasText: templateName });
			await card.waitFor();
			buildID = (await card.getAttribute('data-build')) ?? '';
			await card.getByRole('button', { name: /Hide steps/ }).waitFor();
			await shot(ap, 'admin-build-running');
			await ap.locator(`article[data-build="${buildID}"][data-status="succeeded"]`).waitFor({ timeout: 300000 });
			const steps = card.locator('li[data-step]');
			if ((await steps.count()) !== 2) throw new Error(`${await steps.count()} steps shown, want 2`);
			await card.locator('li[data-step][data-status="succeeded"]').nth(1).waitFor();
			await card.locator('li[data-step="1"] summary').click();
			await card.getByLabel('Output of step 2').getByText('hello').waitFor();
			const pct = await card.getByRole('progressbar').getAttribute('aria-valuenow');
			if (pct !== '100') throw new Error(`progress ${pct}%, want 100`);
			if (!logStreams.includes(`/v1/admin/builds/${buildID}/logs`)) throw new Error(`the live log was not followed: ${logStreams}`);
			await shot(ap, 'admin-builds');
			// No build is active now: the list stops polling.
			await ap.waitForTimeout(1500);
			const before = listCalls.length;
			await ap.waitForTimeout(7000);
			if (listCalls.length !== before) throw new Error(`${listCalls.length - before} polls of the builds list after every build ended`);
		});

		await run('admin: keyboard tabs, 375px, dark', async () => {
			await ap.getByRole('tab', { name: 'Builds' }).focus();
			await ap.keyboard.press('ArrowLeft');
			await ap.waitForURL((u) => !u.search.includes('tab=builds'));
			if ((await ap.getByRole('tab', { name: 'Templates' }).getAttribute('aria-selected')) !== 'true') throw new Error('ArrowLeft did not select Templates');
			const row = ap.locator(`tr[data-template="${templateName}"]`);
			await row.getByText('platform').waitFor();
			await ap.keyboard.press('End');
			await ap.waitForURL('**/admin/templates?tab=builds');
			await ap.setViewportSize({ width: 375, height: 800 });
			await ap.locator(`article[data-build="${buildID}"]`).waitFor();
			await shot(ap, 'admin-builds-375');
			const overflow = await ap.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
			if (overflow > 0) throw new Error(`the builds page is ${overflow}px wider than a 375px screen`);
			await ap.setViewportSize({ width: 1440, height: 900 });
			await ap.getByLabel('Theme').selectOption('dark');
			await shot(ap, 'admin-builds-dark');
			await ap.getByLabel('Theme').selectOption('system');
		});

		await run('admin: delete the built template', async () => {
			await ap.getByRole('tab', { name: 'Templates' }).click();
			const row = ap.locator(`tr[data-template="${templateName}"]`);
			await row.getByRole('button', { name: /Delete/ }).click();
			const dialog = ap.getByRole('dialog', { name: 'Delete this template?' });
			await dialog.getByRole('button', { name: 'Delete' }).click();
			await row.waitFor({ state: 'detached', timeout: 60000 });
		});
		await admin.context.close();
	}
	// ---- end dashb ----
} catch (err) {
	console.error(`FAIL ${step}: ${err?.stack ?? err}`);
	exitCode = 1;
	for (const ctx of browser.contexts())
		for (const p of ctx.pages()) {
			await p.screenshot({ path: join(artifacts, 'failure.png'), fullPage: true }).catch(() => {});
			console.error(`page at failure: ${p.url()}\n${(await p.locator('main').innerText().catch(() => '')).slice(0, 2000)}`);
		}
} finally {
	await browser.close();
	receiver.close();
}
for (const p of problems) console.error(`problem: ${p}`);
if (networkChanged.length) console.log(`note: ${networkChanged.length} requests or messages cut by net::ERR_NETWORK_CHANGED (interface changes in the browser's namespace), first: ${networkChanged[0]}`);
for (const f of foreign) console.error(`foreign request: ${f}`);
if (problems.length || foreign.length) exitCode = 1;
console.log('RESULT ' + JSON.stringify(results));
process.exit(exitCode);

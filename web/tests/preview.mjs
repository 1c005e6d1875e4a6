// A sandbox preview URL opened in headless Chromium (Debian's, driven by
// playwright-core). e2e/proxy_test.go runs this with PREVIEW_URL (a signed
// URL of a busybox httpd port, whose index says EXPECT_TEXT) and CHROMIUM.
// The browser must land on the clean URL with the page loaded, holding an
// HttpOnly, SameSite=Lax cookie for that exact host only. Names resolve to
// loopback only for *.localhost; anything else does not resolve.
import { chromium } from 'playwright-core';
import { bridgeLoopback } from './netns-bridge.mjs';

function must(name) {
	const v = process.env[name];
	if (!v) throw new Error(`${name} is not set`);
	return v;
}

const previewURL = new URL(must('PREVIEW_URL'));
const expectText = must('EXPECT_TEXT');
await bridgeLoopback();
const browser = await chromium.launch({
	executablePath: must('CHROMIUM'),
	headless: true,
	args: ['--no-sandbox', '--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP * ~NOTFOUND', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-default-apps']
});
try {
	const context = await browser.newContext();
	const page = await context.newPage();
	const resp = await page.goto(previewURL.href);
	const clean = `${previewURL.origin}/`;
	if (page.url() !== clean) throw new Error(`landed on ${page.url()}, want ${clean}`);
	if (!resp || resp.status() !== 200) throw new Error(`status ${resp && resp.status()}`);
	const text = (await page.textContent('body')).trim();
	if (text !== expectText) throw new Error(`page says ${JSON.stringify(text)}, want ${JSON.stringify(expectText)}`);
	const cookies = await context.cookies();
	const c = cookies.find((c) => c.name === 'wrenn_preview');
	if (!c || cookies.length !== 1) throw new Error(`cookies ${JSON.stringify(cookies)}`);
	if (!c.httpOnly || c.sameSite !== 'Lax' || c.domain !== previewURL.hostname || c.path !== '/')
		throw new Error(`cookie ${JSON.stringify(c)} is not HttpOnly, SameSite=Lax, host-only on ${previewURL.hostname}`);
	// The page's script cannot read it.
	if ((await page.evaluate(() => document.cookie)).includes('wrenn_preview')) throw new Error('document.cookie shows the preview cookie');
	// A reload is served on the cookie alone.
	const again = await page.reload();
	if (!again || again.status() !== 200) throw new Error(`reload status ${again && again.status()}`);
	console.log('RESULT ' + JSON.stringify({ url: page.url(), cookie: { httpOnly: c.httpOnly, sameSite: c.sameSite, domain: c.domain } }));
} finally {
	await browser.close();
}

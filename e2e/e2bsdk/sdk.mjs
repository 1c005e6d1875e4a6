// Drives the official E2B JS SDK, unmodified, against a real wrenn server
// through its E2B-compatible API: only E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY point it at Wrenn. Run by e2e/e2bsdk_test.go:
//   node sdk.mjs <default template> <named template> <control plane URL>
// Exits non-zero on the first mismatch; prints "RESULT {json}" with the
// timings of the benchmark at the end.
import { Sandbox, CommandExitError, SandboxNotFoundError, NotFoundError } from 'e2b'
import { Sandbox as Sandbox245 } from 'e2b-v245'
import assert from 'node:assert/strict'
import http from 'node:http'

for (const v of ['E2B_API_URL', 'E2B_SANDBOX_URL', 'E2B_API_KEY']) {
  if (!process.env[v]) throw new Error(`${v} is required`)
}
if (process.env.E2B_DEBUG) throw new Error('E2B_DEBUG must not be set: this run goes through the API')
const [defaultTemplate, namedTemplate, cpURL] = process.argv.slice(2)
if (!defaultTemplate || !namedTemplate || !cpURL) throw new Error('usage: node sdk.mjs <default template> <named template> <control plane URL>')

const step = (name) => console.log(`--- ${name}`)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const run = `run-${process.pid}-${Date.now()}`
const eventually = async (what, fn, ms = 15000) => {
  const end = Date.now() + ms
  for (;;) {
    const last = await fn()
    if (last === true) return
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms (last: ${JSON.stringify(last)})`)
    await sleep(100)
  }
}

// GET through the control plane's listener with Host set to a sandbox
// hostname (the proxy serves those; *.localhost need not resolve here).
const viaProxy = (host, path) =>
  new Promise((resolve, reject) => {
    const cp = new URL(cpURL)
    const req = http.request({ host: cp.hostname, port: cp.port, path, headers: { Host: host, 'X-API-Key': process.env.E2B_API_KEY } }, (res) => {
      let body = ''
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
    req.end()
  })

step(`Sandbox.create() of ${defaultTemplate}, with envs and metadata`)
const mainOpts = { timeoutMs: 300_000, metadata: { run, role: 'main' }, envs: { WRENN_E2B: 'from-create' } }
// base is the SDK's own default: create it the way most E2B code does, by no name.
const sbx = defaultTemplate === 'base' ? await Sandbox.create(mainOpts) : await Sandbox.create(defaultTemplate, mainOpts)
{
  const r = await sbx.commands.run('echo $WRENN_E2B')
  assert.equal(r.stdout, 'from-create\n', 'envVars reach envd /init')
}

step('commands.run: stdout, stderr, exit code')
{
  const r = await sbx.commands.run('echo out; echo err >&2')
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'out\n')
  assert.equal(r.stderr, 'err\n')
  await assert.rejects(sbx.commands.run('exit 7'), (e) => e instanceof CommandExitError && e.exitCode === 7)
}

step('background command, connect, kill')
{
  const h = await sbx.commands.run('echo started; sleep 600', { background: true })
  assert.ok(h.pid > 0)
  const again = await sbx.commands.connect(h.pid)
  assert.ok(await sbx.commands.kill(h.pid))
  await assert.rejects(again.wait(), (e) => e instanceof CommandExitError)
  const list = await sbx.commands.list()
  assert.ok(!list.some((p) => p.pid === h.pid), 'the killed process is gone')
}

step('files: write, read, list, makeDir, rename, exists, remove')
{
  await sbx.files.makeDir('/tmp/e2b/dir')
  await sbx.files.write('/tmp/e2b/dir/a.txt', 'hello files')
  assert.equal(await sbx.files.read('/tmp/e2b/dir/a.txt'), 'hello files')
  const names = (await sbx.files.list('/tmp/e2b/dir')).map((e) => e.name)
  assert.deepEqual(names, ['a.txt'])
  await sbx.files.rename('/tmp/e2b/dir/a.txt', '/tmp/e2b/dir/b.txt')
  assert.equal(await sbx.files.exists('/tmp/e2b/dir/a.txt'), false)
  assert.equal(await sbx.files.exists('/tmp/e2b/dir/b.txt'), true)
  await sbx.files.remove('/tmp/e2b/dir')
  assert.equal(await sbx.files.exists('/tmp/e2b/dir'), false)
}

step('watchDir')
{
  await sbx.files.makeDir('/tmp/watched')
  const seen = []
  const w = await sbx.files.watchDir('/tmp/watched', (ev) => seen.push(ev))
  await sbx.files.write('/tmp/watched/new.txt', 'x')
  await eventually('a watch event names new.txt', () => seen.some((e) => e.name === 'new.txt') || seen)
  await w.stop()
}

step('getInfo')
{
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.templateId, defaultTemplate)
  assert.equal(info.state, 'running')
  assert.equal(info.metadata.run, run)
  assert.ok(info.cpuCount >= 1 && info.memoryMB >= 128, JSON.stringify(info))
  assert.ok(info.endAt > info.startedAt, 'endAt after startedAt')
}

step('sandbox.getHost(8080) reaches a guest web server (busybox httpd, or python3 on base)')
{
  await sbx.files.write('/tmp/www/index.html', 'served by the guest')
  // minimal has busybox; base (Debian) has python3 instead.
  await sbx.commands.run('if command -v busybox >/dev/null; then exec busybox httpd -f -p 8080 -h /tmp/www; else exec python3 -m http.server 8080 -d /tmp/www; fi', { background: true })
  const host = sbx.getHost(8080)
  assert.match(host, new RegExp(`^8080-${sbx.sandboxId}\\.`))
  await eventually('the guest httpd answers through the proxy', async () => {
    const r = await viaProxy(host, '/index.html')
    return (r.status === 200 && r.body === 'served by the guest') || r
  })
}

step(`a named template (${namedTemplate}) and Sandbox.list with a metadata filter`)
const other = await Sandbox.create(namedTemplate, { timeoutMs: 300_000, metadata: { run, role: 'other' } })
{
  assert.equal((await other.getInfo()).templateId, namedTemplate)
  const page = await Sandbox.list({ query: { metadata: { run, role: 'other' } } }).nextItems()
  assert.deepEqual(page.map((s) => s.sandboxId), [other.sandboxId])
  const all = await Sandbox.list({ query: { metadata: { run } } }).nextItems()
  assert.deepEqual(all.map((s) => s.sandboxId).sort(), [sbx.sandboxId, other.sandboxId].sort())
}

step('setTimeout and expiry')
{
  await other.setTimeout(3000)
  await eventually('the sandbox ends at its timeout', async () => {
    try {
      await Sandbox.getInfo(other.sandboxId)
      return 'still there'
    } catch (e) {
      return e instanceof SandboxNotFoundError || String(e)
    }
  }, 20000)
  await assert.rejects(Sandbox.connect(other.sandboxId), (e) => e instanceof NotFoundError)
}

step('pause, then Sandbox.connect keeps a file and a running process')
let back
{
  await sbx.files.write('/tmp/kept.txt', 'kept across pause')
  const h = await sbx.commands.run('sleep 3600', { background: true })
  assert.equal(await sbx.pause(), true)
  assert.equal(await sbx.pause(), false, 'a second pause says it was paused')
  assert.equal((await sbx.getInfo()).state, 'paused')
  back = await Sandbox.connect(sbx.sandboxId)
  assert.equal(await back.files.read('/tmp/kept.txt'), 'kept across pause')
  const list = await back.commands.list()
  assert.ok(list.some((p) => p.pid === h.pid), `process ${h.pid} survived: ${JSON.stringify(list.map((p) => p.pid))}`)
  assert.equal((await back.getInfo()).state, 'running')
}

step('PTY: input and resize (on the reconnected sandbox)')
{
  // The SDK's PTY runs /bin/bash; a template without bash (minimal has
  // busybox's sh only) gets a stand-in, so the PTY is tested either way.
  if (!(await back.files.exists('/bin/bash'))) {
    console.log('template has no /bin/bash: the PTY runs busybox sh through a /bin/bash stand-in')
    await back.commands.run('printf "#!/bin/sh\\nexec /bin/sh \\"\\$@\\"\\n" > /bin/bash && chmod 755 /bin/bash', { user: 'root' })
  }
  let out = ''
  const dec = new TextDecoder()
  const pty = await back.pty.create({ cols: 80, rows: 24, onData: (d) => (out += dec.decode(d)) })
  await back.pty.resize(pty.pid, { cols: 120, rows: 40 })
  await back.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo pty-$((40+2))\n'))
  await eventually('the PTY answers', () => (out.includes('40 120') && out.includes('pty-42')) || out)
  await back.pty.kill(pty.pid)
}

step('kill')
{
  await sbx.kill()
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), (e) => e instanceof SandboxNotFoundError)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false, 'a second kill finds nothing')
  await assert.rejects(Sandbox.connect(sbx.sandboxId), (e) => e instanceof NotFoundError)
}

step('SDK 2.45 (v1 routes): create, run, connect, kill')
{
  // SDKs before 2.46 refuse keys not shaped like E2B's (e2b_<hex>) unless
  // told not to check (E2B_VALIDATE_API_KEY=false does the same).
  const v1 = { validateApiKey: false }
  const old = await Sandbox245.create(namedTemplate, { ...v1, timeoutMs: 120_000 })
  assert.equal((await old.commands.run('echo v1')).stdout, 'v1\n')
  const again = await Sandbox245.connect(old.sandboxId, v1)
  assert.equal((await again.commands.run('echo again')).stdout, 'again\n')
  await old.kill()
  await assert.rejects(Sandbox245.getInfo(old.sandboxId, v1))
}

step('benchmark: create to first commands.run, E2B API vs Wrenn API')
const rounds = 3
const e2b = []
const wrenn = []
const key = process.env.E2B_API_KEY
const wrennCall = async (method, path, body) => {
  const res = await fetch(cpURL + path, { method, headers: { 'X-API-Key': key, 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}
for (let i = 0; i < rounds; i++) {
  let t0 = performance.now()
  const s = await Sandbox.create(namedTemplate, { timeoutMs: 120_000 })
  assert.equal((await s.commands.run('true')).exitCode, 0)
  e2b.push(performance.now() - t0)
  await s.kill()

  t0 = performance.now()
  const sb = await wrennCall('POST', '/v1/sandboxes', { template: namedTemplate })
  const r = await wrennCall('POST', `/v1/sandboxes/${sb.id}/exec`, { cmd: 'true' })
  assert.equal(r.exit_code, 0)
  wrenn.push(performance.now() - t0)
  await wrennCall('DELETE', `/v1/sandboxes/${sb.id}`)
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
console.log('RESULT ' + JSON.stringify({ e2bMS: e2b, wrennMS: wrenn, e2bMedianMS: median(e2b), wrennMedianMS: median(wrenn), ratio: median(e2b) / median(wrenn) }))
console.log('ok')

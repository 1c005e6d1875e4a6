// Drives the official E2B JS SDK (debug mode: envd at localhost:49983)
// against Wrenn's envd. Exits non-zero on the first mismatch.
// Run by e2bcompat_test.go; WRENN_E2B_DIR is a scratch directory.
import { Sandbox, CommandExitError } from 'e2b'
import assert from 'node:assert/strict'

if (process.env.E2B_DEBUG !== 'true') throw new Error('E2B_DEBUG=true is required')
const dir = process.env.WRENN_E2B_DIR
if (!dir) throw new Error('WRENN_E2B_DIR is required')

const step = (name) => console.log(`--- ${name}`)
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const sbx = await Sandbox.create()

step('command with streamed output')
{
  const out = []
  const err = []
  const res = await sbx.commands.run('echo one; sleep 0.1; echo two; echo oops >&2', {
    onStdout: (d) => out.push(d),
    onStderr: (d) => err.push(d),
    envs: { WRENN_X: 'x' },
  })
  assert.equal(res.exitCode, 0)
  assert.equal(res.stdout, 'one\ntwo\n')
  assert.equal(res.stderr, 'oops\n')
  assert.ok(out.length >= 2, `streamed in pieces: ${JSON.stringify(out)}`)
  assert.equal(out.join(''), 'one\ntwo\n')
  assert.equal(err.join(''), 'oops\n')
  const env = await sbx.commands.run('echo $WRENN_X; pwd', { envs: { WRENN_X: 'y' }, cwd: dir })
  assert.equal(env.stdout, `y\n${dir}\n`)
}

step('non-zero exit')
{
  await assert.rejects(sbx.commands.run('echo bad >&2; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, String(e))
    assert.equal(e.exitCode, 3)
    assert.equal(e.stderr, 'bad\n')
    return true
  })
}

step('background command, list, connect, stdin, kill')
{
  const h = await sbx.commands.run('sleep 0.3; echo bg-done', { background: true })
  assert.ok(h.pid > 0)
  const list = await sbx.commands.list()
  assert.ok(list.some((p) => p.pid === h.pid), `list has ${h.pid}: ${JSON.stringify(list)}`)
  const res = await h.wait()
  assert.equal(res.exitCode, 0)
  assert.equal(res.stdout, 'bg-done\n')

  const cat = await sbx.commands.run('cat', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'piped\n')
  const again = await sbx.commands.connect(cat.pid)
  await again.closeStdin()
  const catRes = await again.wait()
  assert.match(catRes.stdout, /piped\n/)

  const long = await sbx.commands.run('sleep 60', { background: true })
  assert.equal(await sbx.commands.kill(long.pid), true)
  await assert.rejects(long.wait(), (e) => e instanceof CommandExitError)
  assert.equal(await sbx.commands.kill(long.pid), false)
}

step('pty')
{
  let data = ''
  const dec = new TextDecoder()
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { data += dec.decode(d) } })
  const enc = new TextEncoder()
  const waitFor = async (s) => {
    for (let i = 0; i < 200 && !data.includes(s); i++) await sleep(25)
    assert.ok(data.includes(s), `pty output has ${JSON.stringify(s)}: ${JSON.stringify(data)}`)
    data = ''
  }
  await sbx.pty.sendInput(term.pid, enc.encode('stty size\n'))
  await waitFor('24 80')
  await sbx.pty.resize(term.pid, { cols: 120, rows: 40 })
  await sbx.pty.sendInput(term.pid, enc.encode('stty size\n'))
  await waitFor('40 120')
  await sbx.pty.sendInput(term.pid, enc.encode('exit 0\n'))
  const res = await term.wait()
  assert.equal(res.exitCode, 0)
}

step('files write/read/list/info/rename/remove')
{
  const p = `${dir}/sdk/nested/hello.txt`
  const info = await sbx.files.write(p, 'hello from the SDK\n')
  assert.equal(info.path, p)
  assert.equal(info.name, 'hello.txt')
  assert.equal(await sbx.files.read(p), 'hello from the SDK\n')
  const bytes = await sbx.files.read(p, { format: 'bytes' })
  assert.equal(bytes.length, 19)
  const many = await sbx.files.write([
    { path: `${dir}/sdk/a.txt`, data: 'A' },
    { path: `${dir}/sdk/b.txt`, data: new Blob(['B']) },
  ])
  assert.equal(many.length, 2)
  assert.equal(await sbx.files.read(`${dir}/sdk/b.txt`), 'B')
  const entries = await sbx.files.list(`${dir}/sdk`)
  assert.deepEqual(entries.map((e) => `${e.name}:${e.type}`).sort(), ['a.txt:file', 'b.txt:file', 'nested:dir'])
  const deep = await sbx.files.list(`${dir}/sdk`, { depth: 2 })
  assert.ok(deep.some((e) => e.path === p), 'depth 2 lists nested file')
  assert.equal(await sbx.files.exists(p), true)
  assert.equal(await sbx.files.exists(`${dir}/nope`), false)
  const st = await sbx.files.getInfo(p)
  assert.equal(st.size, 19)
  assert.equal(st.type, 'file')
  assert.equal(await sbx.files.makeDir(`${dir}/sdk/newdir`), true)
  assert.equal(await sbx.files.makeDir(`${dir}/sdk/newdir`), false)
  const moved = await sbx.files.rename(`${dir}/sdk/a.txt`, `${dir}/sdk/newdir/a2.txt`)
  assert.equal(moved.path, `${dir}/sdk/newdir/a2.txt`)
  await sbx.files.remove(`${dir}/sdk/newdir`)
  assert.equal(await sbx.files.exists(`${dir}/sdk/newdir`), false)
  await assert.rejects(sbx.files.read(`${dir}/nope`))
}

step('file metadata, symlink info, removing what is not there')
{
  const md = { owner: 'alice', build: '7' }
  const p = `${dir}/meta/m.txt`
  const info = await sbx.files.write(p, 'm', { metadata: md })
  assert.deepEqual(info.metadata, md)
  assert.deepEqual((await sbx.files.getInfo(p)).metadata, md)
  const ls = await sbx.files.list(`${dir}/meta`)
  assert.deepEqual(ls.map((e) => e.metadata), [md])
  const moved = await sbx.files.rename(p, `${dir}/meta/n.txt`)
  assert.deepEqual(moved.metadata, md)
  await sbx.commands.run(`ln -s n.txt ${dir}/meta/link`)
  const li = await sbx.files.getInfo(`${dir}/meta/link`)
  assert.equal(li.type, 'file')
  assert.equal(li.symlinkTarget, `${dir}/meta/n.txt`)
  assert.deepEqual(li.metadata, md)
  await sbx.files.remove(`${dir}/meta/never-was`)
}

step('watch dir')
{
  const wdir = `${dir}/watched`
  await sbx.files.makeDir(wdir)
  const events = []
  const handle = await sbx.files.watchDir(wdir, (e) => events.push(`${e.type}:${e.name}`))
  await sbx.files.write(`${wdir}/w.txt`, 'x')
  await sbx.commands.run(`mv ${wdir}/w.txt ${wdir}/w2.txt && rm ${wdir}/w2.txt`)
  for (let i = 0; i < 200 && !events.includes('remove:w2.txt'); i++) await sleep(25)
  await handle.stop()
  // The upload shows as a write on the file's own name; its temporary
  // file never shows.
  for (const want of ['write:w.txt', 'rename:w.txt', 'remove:w2.txt']) {
    assert.ok(events.includes(want), `watch events ${JSON.stringify(events)} lack ${want}`)
  }
  assert.ok(events.some((e) => e === 'create:w.txt' || e === 'create:w2.txt'), `creates in ${JSON.stringify(events)}`)
  const names = events.map((e) => e.slice(e.indexOf(':') + 1))
  assert.deepEqual([...new Set(names)].sort(), ['w.txt', 'w2.txt'], `only the file's names in ${JSON.stringify(events)}`)
}

console.log('E2B SDK compatibility: all checks passed')

import { get } from 'svelte/store';
import { describe, expect, it } from 'vitest';
import { backoffMs, createConnection } from './connection';

describe('backoffMs', () => {
	it.each([
		[0, 1000],
		[1, 2000],
		[4, 16000],
		[5, 30000],
		[50, 30000]
	])('attempt %d waits %d ms', (a, want) => expect(backoffMs(a)).toBe(want));
});

// Manual timers: the test decides when time passes.
function fakeTimers() {
	const pending: { f: () => void; ms: number; id: number }[] = [];
	let next = 1;
	return {
		pending,
		timers: {
			set: (f: () => void, ms: number) => {
				const id = next++;
				pending.push({ f, ms, id });
				return id;
			},
			clear: (h: unknown) => {
				const i = pending.findIndex((p) => p.id === h);
				if (i >= 0) pending.splice(i, 1);
			}
		},
		async fire() {
			const p = pending.shift();
			if (!p) throw new Error('no timer pending');
			p.f();
			await new Promise((r) => setTimeout(r, 0));
			return p.ms;
		}
	};
}

describe('connection', () => {
	it('backs off while down and clears on the first answer', async () => {
		const answers = [false, false, true];
		let probes = 0;
		const t = fakeTimers();
		const c = createConnection(async () => {
			probes++;
			return answers.shift() ?? true;
		}, t.timers);
		c.unreachable();
		c.unreachable(); // a second failure does not start a second loop
		expect(t.pending.length).toBe(1);
		expect(get(c).down).toBe(true);
		expect(await t.fire()).toBe(1000);
		expect(await t.fire()).toBe(2000);
		expect(get(c)).toMatchObject({ down: true, retryInSec: 4 });
		expect(await t.fire()).toBe(4000);
		expect(get(c).down).toBe(false);
		expect(probes).toBe(3);
		expect(t.pending.length).toBe(0);
	});

	it('an answer elsewhere ends the retries', () => {
		const t = fakeTimers();
		const c = createConnection(async () => false, t.timers);
		c.unreachable();
		c.reached();
		expect(get(c).down).toBe(false);
		expect(t.pending.length).toBe(0);
	});
});

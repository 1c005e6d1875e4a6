import { describe, expect, it } from 'vitest';
import { nextDelayMs, poll, pollAnswer } from './poll';

function fakeTimers() {
	const pending: { f: () => void; ms: number }[] = [];
	return {
		pending,
		timers: { set: (f: () => void, ms: number) => pending.push({ f, ms }), clear: () => {} },
		async fire() {
			const t = pending.shift();
			t?.f();
			await new Promise((r) => setTimeout(r, 0));
			return t?.ms;
		}
	};
}
const settle = () => new Promise((r) => setTimeout(r, 0));

describe('nextDelayMs', () => {
	it.each([
		[5, 10, 5000],
		[undefined, 10, 10000],
		[0, 10, 1000],
		[-3, 10, 1000],
		[NaN, 7, 7000],
		[100000, 10, 600000]
	])('hint %s, fallback %s -> %s ms', (hint, fallback, want) => {
		expect(nextDelayMs(hint, fallback)).toBe(want);
	});
});

describe('poll', () => {
	it('waits the delay each answer asks for, one load at a time', async () => {
		const ft = fakeTimers();
		const hints = [3, 20];
		let loads = 0;
		const stop = poll(async () => hints[loads++], { timers: ft.timers, hidden: () => false });
		await settle();
		expect(loads).toBe(1);
		expect(ft.pending.map((p) => p.ms)).toEqual([3000]);
		await ft.fire();
		expect(loads).toBe(2);
		expect(ft.pending.map((p) => p.ms)).toEqual([20000]);
		stop();
	});

	it('a failed load waits the fallback and keeps polling', async () => {
		const ft = fakeTimers();
		let loads = 0;
		poll(
			async () => {
				loads++;
				throw new Error('down');
			},
			{ timers: ft.timers, hidden: () => false, fallbackSec: 15 }
		);
		await settle();
		expect(ft.pending.map((p) => p.ms)).toEqual([15000]);
		await ft.fire();
		expect(loads).toBe(2);
	});

	it('a hidden tab loads once, then skips its turns', async () => {
		const ft = fakeTimers();
		let loads = 0;
		poll(async () => (loads++, 5), { timers: ft.timers, hidden: () => true });
		await settle();
		await ft.fire();
		await ft.fire();
		expect(loads).toBe(1);
		expect(ft.pending.length).toBe(1);
	});

	it('schedules nothing after stop, even for a load in flight', async () => {
		const ft = fakeTimers();
		let release: (v: number) => void = () => {};
		const stop = poll(() => new Promise<number>((r) => (release = r)), { timers: ft.timers, hidden: () => false });
		stop();
		release(5);
		await settle();
		expect(ft.pending.length).toBe(0);
	});
});

describe('pollAnswer', () => {
	it('hands over answers and failures, paced by poll_after_sec', async () => {
		const ft = fakeTimers();
		const got: string[] = [];
		let n = 0;
		pollAnswer(
			async () => {
				if (n++ === 1) throw new Error('down');
				return { poll_after_sec: 4, n };
			},
			(a) => got.push(`answer ${a.n}`),
			(e) => got.push(`error ${(e as Error).message}`),
			{ timers: ft.timers, hidden: () => false, fallbackSec: 9 }
		);
		await settle();
		expect(ft.pending.map((p) => p.ms)).toEqual([4000]);
		await ft.fire();
		expect(ft.pending.map((p) => p.ms)).toEqual([9000]);
		await ft.fire();
		expect(got).toEqual(['answer 1', 'error down', 'answer 3']);
	});

	it('drops an answer that arrives after stop', async () => {
		const ft = fakeTimers();
		const got: number[] = [];
		let release: (v: { poll_after_sec: number }) => void = () => {};
		const stop = pollAnswer(
			() => new Promise<{ poll_after_sec: number }>((r) => (release = r)),
			(a) => got.push(a.poll_after_sec),
			() => {},
			{ timers: ft.timers, hidden: () => false }
		);
		stop();
		release({ poll_after_sec: 5 });
		await settle();
		expect(got).toEqual([]);
	});
});

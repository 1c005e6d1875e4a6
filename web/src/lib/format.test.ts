import { describe, expect, it } from 'vitest';
import { bucketLabel, bytes, count, duration, mebibytes, millis, percent, relative } from './format';

describe('bytes', () => {
	it.each([
		[0, '0 B'],
		[1023, '1023 B'],
		[1536, '1.5 KiB'],
		[10 * 1024 * 1024, '10 MiB'],
		[5.25 * 1024 ** 3, '5.3 GiB'],
		[-1, '—'],
		[Number.NaN, '—']
	])('%d -> %s', (n, want) => expect(bytes(n)).toBe(want));
});

describe('mebibytes', () => {
	it.each([
		[512, '512 MiB'],
		[1024, '1 GiB'],
		[1536, '1.5 GiB']
	])('%d -> %s', (n, want) => expect(mebibytes(n)).toBe(want));
});

describe('duration', () => {
	it.each([
		[0, '0s'],
		[59, '59s'],
		[60, '1m'],
		[3725, '1h 2m'],
		[90061, '1d 1h'],
		[86400, '1d'],
		[-5, '—']
	])('%d -> %s', (n, want) => expect(duration(n)).toBe(want));
});

describe('relative', () => {
	const now = new Date('2026-01-10T12:00:00Z');
	it.each([
		['2026-01-10T11:59:50Z', 'just now'],
		['2026-01-10T11:55:00Z', '5 minutes ago'],
		['2026-01-10T09:00:00Z', '3 hours ago'],
		['2026-01-08T12:00:00Z', '2 days ago'],
		['2026-01-12T12:00:00Z', 'in 2 days'],
		['not a date', '—']
	])('%s -> %s', (when, want) => expect(relative(when, now)).toBe(want));
	it('null is never', () => expect(relative(null, now)).toBe('never'));
});

describe('millis', () => {
	it.each([
		[0, '0 ms'],
		[350, '350 ms'],
		[1000, '1s'],
		[1500, '1.5s'],
		[59949, '59.9s'],
		[125000, '2m 5s'],
		[-5, '—'],
		[Number.NaN, '—']
	])('%d -> %s', (n, want) => expect(millis(n)).toBe(want));
});

describe('count', () => {
	it.each([
		[0, '0'],
		[12345, '12,345'],
		[2.6, '3'],
		[null, '—'],
		[Number.NaN, '—']
	])('%s -> %s', (n, want) => expect(count(n)).toBe(want));
});

describe('percent', () => {
	it.each([
		[0, '0%'],
		[3.14159, '3.1%'],
		[42.4, '42%'],
		[100, '100%'],
		[null, '—']
	])('%s -> %s', (n, want) => expect(percent(n)).toBe(want));
});

describe('bucketLabel', () => {
	it.each([
		['2026-12-01T14:05:10Z', 300, '14:05:10'],
		['2026-12-01T14:05:00Z', 3600, '14:05'],
		['2026-12-01T14:00:00Z', 86400, '14:00'],
		['2026-12-01T14:00:00Z', 30 * 86400, 'Dec 1, 14:00'],
		['not a time', 3600, '']
	])('%s over %ss -> %s', (t, range, want) => expect(bucketLabel(t, range, 'UTC')).toBe(want));
});

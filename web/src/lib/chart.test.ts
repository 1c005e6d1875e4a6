import { describe, expect, it } from 'vitest';
import { describeLatest, summarize, type Axis, type Series } from './chart';

const s = (data: (number | null)[], axis: 'y' | 'y1' = 'y', label = 'Running'): Series => ({ label, data, axis, color: '--chart-1' });
const axes: Axis[] = [
	{ id: 'y', title: 'Capsules', integer: true, format: (v) => `${v}` },
	{ id: 'y1', title: 'Memory', format: (v) => `${v} MiB` }
];

describe('summarize', () => {
	it.each([
		['empty', [], 0, 0],
		['zeros are points', [s([0, 0, 0])], 3, 0],
		['gaps are not', [s([null, 2, null, 1])], 2, 2],
		['over every series', [s([1, 3]), s([7, null], 'y1')], 3, 7]
	])('%s', (_, series, points, max) => expect(summarize(series as Series[])).toEqual({ points, max }));
});

describe('describeLatest', () => {
	it('names the last value of each series in its axis format', () => {
		expect(describeLatest([s([1, 2, null]), s([512, null], 'y1', 'Memory')], axes)).toBe('Latest: Running 2, Memory 512 MiB.');
	});
	it('says when a series has none', () => {
		expect(describeLatest([s([null])], axes)).toBe('Latest: Running no data.');
	});
});

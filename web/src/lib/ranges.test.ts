import { describe, expect, it } from 'vitest';
import { capsuleRanges, pickRange, usageRanges, withRange } from './ranges';

describe('pickRange', () => {
	it.each([
		['5m', '1h', '5m'],
		['30d', '1h', '30d'],
		[null, '1h', '1h'],
		['7d', '1h', '1h'],
		['', '6h', '6h']
	])('%s (fallback %s) -> %s', (v, fallback, want) => expect(pickRange(usageRanges, v, fallback as '1h').id).toBe(want));

	it('a capsule has no 30 day history', () => {
		expect(pickRange(capsuleRanges, '30d', '5m').id).toBe('5m');
	});
});

describe('withRange', () => {
	it('keeps the other parameters', () => {
		expect(withRange(new URL('http://x/dashboard/capsules/sb-1?tab=metrics&range=5m'), '1h')).toBe('/dashboard/capsules/sb-1?tab=metrics&range=1h');
	});
});

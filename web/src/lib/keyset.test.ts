import { describe, expect, it } from 'vitest';
import { cursorOf, firstPage, newer, older, pageNumber } from './keyset';

describe('keyset trail', () => {
	it('walks forward and back over the cursors it was given', () => {
		let t = firstPage();
		expect([cursorOf(t), pageNumber(t)]).toEqual([undefined, 1]);
		t = older(t, 'c2');
		t = older(t, 'c3');
		expect([cursorOf(t), pageNumber(t)]).toEqual(['c3', 3]);
		t = newer(t);
		expect([cursorOf(t), pageNumber(t)]).toEqual(['c2', 2]);
		t = newer(newer(t));
		expect([cursorOf(t), pageNumber(t)]).toEqual([undefined, 1]);
	});
	it('never changes a trail in place', () => {
		const a = firstPage();
		const b = older(a, 'c2');
		expect(pageNumber(a)).toBe(1);
		expect(pageNumber(newer(b))).toBe(1);
		expect(pageNumber(b)).toBe(2);
	});
});

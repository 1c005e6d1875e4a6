import { describe, expect, it } from 'vitest';
import { tabForKey } from './tabs';

describe('tabForKey', () => {
	const tabs = ['templates', 'builds', 'third'] as const;
	it.each([
		['templates', 'ArrowRight', 'builds'],
		['third', 'ArrowRight', 'templates'],
		['templates', 'ArrowLeft', 'third'],
		['builds', 'Home', 'templates'],
		['builds', 'End', 'third'],
		['builds', 'Enter', undefined],
		['builds', 'a', undefined]
	] as const)('%s + %s -> %s', (from, key, want) => expect(tabForKey(tabs, from, key)).toBe(want));
	it('an empty list has no tab', () => expect(tabForKey([], 'x', 'ArrowRight')).toBeUndefined());
});

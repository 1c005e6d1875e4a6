import { describe, expect, it } from 'vitest';
import { joinPath, parentPath } from './paths';

describe('paths', () => {
	it.each([
		['/', 'a', '/a'],
		['/tmp', 'a.txt', '/tmp/a.txt'],
		['/tmp/', '/a', '/tmp/a']
	])('join %s %s', (d, n, want) => expect(joinPath(d, n)).toBe(want));
	it.each([
		['/', '/'],
		['/tmp', '/'],
		['/tmp/x/', '/tmp'],
		['/a/b/c', '/a/b']
	])('parent of %s', (p, want) => expect(parentPath(p)).toBe(want));
});

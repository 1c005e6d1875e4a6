import { describe, expect, it } from 'vitest';
import { safeNext, signinURL } from './session';
import { csrfToken, fillPath } from './api/client';

describe('safeNext', () => {
	it.each([
		['/dashboard/keys', '/dashboard/keys'],
		['/dashboard/capsules/sb-1?tab=files', '/dashboard/capsules/sb-1?tab=files'],
		['//evil.example/x', '/dashboard/capsules/list'],
		['/\\evil.example', '/dashboard/capsules/list'],
		['https://evil.example', '/dashboard/capsules/list'],
		[null, '/dashboard/capsules/list']
	])('%s -> %s', (next, want) => expect(safeNext(next)).toBe(want));
});

describe('signinURL', () => {
	it('remembers the page', () => expect(signinURL(new URL('http://x/dashboard/team?x=1'))).toBe('/signin?next=%2Fdashboard%2Fteam%3Fx%3D1'));
	it('does not nest sign-in pages', () => expect(signinURL(new URL('http://x/signin?next=%2Fa'))).toBe('/signin'));
});

describe('client helpers', () => {
	it('reads the csrf cookie', () => expect(csrfToken('a=1; wrenn_csrf=tok%2Dx; b=2')).toBe('tok-x'));
	it('no cookie, no token', () => expect(csrfToken('a=1')).toBe(''));
	it('fills and escapes path parameters', () => expect(fillPath('/v1/teams/{team_id}/members/{user_id}', { team_id: 'team-1', user_id: 'a/b' })).toBe('/v1/teams/team-1/members/a%2Fb'));
	it('refuses a missing parameter', () => expect(() => fillPath('/v1/x/{id}', {})).toThrow('missing path parameter id'));
});

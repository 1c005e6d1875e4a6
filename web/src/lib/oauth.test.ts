import { describe, expect, it } from 'vitest';
import { providerLabel, readFragment, startURL } from './oauth';

describe('oauth', () => {
	it.each([
		['#oauth_code=abc123', { kind: 'code', code: 'abc123' }],
		['oauth_code=a%2Bb', { kind: 'code', code: 'a+b' }],
		['#oauth_linked=github', { kind: 'linked', provider: 'github' }],
		['#oauth_error=email_taken&oauth_message=an+account+exists%3B+log+in', { kind: 'error', code: 'email_taken', message: 'an account exists; log in' }],
		['#oauth_error=oauth_denied', { kind: 'error', code: 'oauth_denied', message: 'Signing in through the provider failed.' }],
		['#oauth_code=', { kind: 'none' }],
		['', { kind: 'none' }],
		['#something=else', { kind: 'none' }]
	])('fragment %s', (hash, want) => expect(readFragment(hash)).toEqual(want));

	it('the start URL lands on the callback page, which goes on to next', () => {
		const u = new URL(startURL('github', '/dashboard/keys?x=1'), 'http://cp');
		expect(u.pathname).toBe('/v1/auth/oauth/github');
		const landing = new URL(u.searchParams.get('redirect') ?? '', 'http://cp');
		expect(landing.pathname).toBe('/auth/callback');
		expect(landing.searchParams.get('next')).toBe('/dashboard/keys?x=1');
		// The control plane refuses a redirect with a fragment or another host.
		expect(u.searchParams.get('redirect')).not.toContain('#');
	});

	it('an unsafe next becomes the default page', () => {
		const u = new URL(startURL('github', '//evil.example'), 'http://cp');
		expect(new URL(u.searchParams.get('redirect') ?? '', 'http://cp').searchParams.get('next')).toBe('/dashboard/capsules/list');
	});

	it('names providers for people', () => {
		expect(providerLabel('github')).toBe('GitHub');
		expect(providerLabel('gitlab')).toBe('Gitlab');
	});
});

// Sign-in through providers (GitHub): which buttons to show, where a
// button sends the browser, and what the callback brought back in the
// URL fragment (a one-time code, never a token).
import { request } from '$lib/api/client';
import { cookieMode, loadMe, safeNext } from '$lib/session';

/** The dashboard page the control plane's callback lands on. */
export const callbackPath = '/auth/callback';

export const providerLabels: Record<string, string> = { github: 'GitHub' };

export function providerLabel(name: string): string {
	return providerLabels[name] ?? name.charAt(0).toUpperCase() + name.slice(1);
}

/** The providers the server is configured with; none when it cannot say. */
export async function loadProviders(): Promise<string[]> {
	try {
		return (await request('get', '/v1/auth/providers', {})).providers;
	} catch {
		return [];
	}
}

/**
 * Where a sign-in button goes: the control plane's start route, asked to
 * land on the callback page, which then goes on to next.
 */
export function startURL(provider: string, next: string): string {
	const landing = callbackPath + '?next=' + encodeURIComponent(safeNext(next));
	return `/v1/auth/oauth/${encodeURIComponent(provider)}?redirect=${encodeURIComponent(landing)}`;
}

export type Landing = { kind: 'code'; code: string } | { kind: 'linked'; provider: string } | { kind: 'error'; code: string; message: string } | { kind: 'none' };

/** What the callback put in the fragment ("#oauth_code=...", "#oauth_linked=github" or "#oauth_error=...&oauth_message=..."). */
export function readFragment(hash: string): Landing {
	const p = new URLSearchParams(hash.replace(/^#/, ''));
	const failed = p.get('oauth_error');
	if (failed) return { kind: 'error', code: failed, message: p.get('oauth_message') || 'Signing in through the provider failed.' };
	const code = p.get('oauth_code');
	if (code) return { kind: 'code', code };
	const linked = p.get('oauth_linked');
	if (linked) return { kind: 'linked', provider: linked };
	return { kind: 'none' };
}

/** Spends the one-time code for a cookie session. */
export async function exchange(code: string): Promise<void> {
	await request('post', '/v1/auth/oauth/exchange', { body: { code }, headers: cookieMode });
	await loadMe();
}

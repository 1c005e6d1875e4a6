// Who is signed in, and where to go after signing in again.
import { writable } from 'svelte/store';
import { request, SESSION_MODE_HEADER, type Schemas } from '$lib/api/client';

export type Me = Schemas['Me'];
export const me = writable<Me | undefined>(undefined);

/** Ask for the cookie session: the page never holds the token. */
export const cookieMode = { [SESSION_MODE_HEADER]: 'cookie' };

/** A `next` parameter is followed only to a page of this dashboard. */
export function safeNext(next: string | null | undefined): string {
	if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/\\')) return '/dashboard/capsules/list';
	return next;
}

/** The sign-in page remembering where the user was. */
export function signinURL(current: URL): string {
	const here = current.pathname + current.search;
	return here.startsWith('/signin') || here.startsWith('/signup') ? '/signin' : '/signin?next=' + encodeURIComponent(here);
}

export async function loadMe(): Promise<Me> {
	const m = await request('get', '/v1/me', {});
	me.set(m);
	return m;
}

export async function logout(): Promise<void> {
	await request('post', '/v1/auth/logout', {});
	me.set(undefined);
}

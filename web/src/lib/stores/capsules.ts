// The team's capsules, shared by every page (the nav's running-count
// badge, the list, the detail page). Actions update the list at once and
// put the old row back when the API refuses.
import { derived, get, writable } from 'svelte/store';
import { request, type Schemas } from '$lib/api/client';

export type Capsule = Schemas['Sandbox'];
export type Status = Schemas['SandboxStatus'];

/** The status a capsule shows while an action is in flight. */
export const pendingStatus: Record<'pause' | 'resume' | 'destroy', Status> = {
	pause: 'paused',
	resume: 'running',
	destroy: 'stopping'
};

export function upsert(list: Capsule[], c: Capsule): Capsule[] {
	const i = list.findIndex((x) => x.id === c.id);
	if (i < 0) return [c, ...list];
	const out = list.slice();
	out[i] = c;
	return out;
}

export function withStatus(list: Capsule[], id: string, status: Status): Capsule[] {
	return list.map((c) => (c.id === id ? { ...c, status } : c));
}

export function runningCount(list: Capsule[]): number {
	return list.filter((c) => c.status === 'running').length;
}

/** Stopped capsules are history: the list hides them. */
export function visible(list: Capsule[]): Capsule[] {
	return list.filter((c) => c.status !== 'stopped');
}

export const capsules = writable<Capsule[]>([]);
export const loaded = writable(false);
export const capsuleRunningCount = derived(capsules, runningCount);

/** The statuses the list asks for: all but stopped, so history never pushes live capsules off a page. */
export const liveStatuses: Status[] = ['pending', 'running', 'paused', 'stopping', 'error', 'missing'];
/** The API's largest page, and the most pages one refresh walks. */
export const pageSize = 200;
export const maxPages = 10;

/** Every live capsule, following the API's pages (the running count needs them all). */
async function loadAll(): Promise<Capsule[]> {
	const out: Capsule[] = [];
	let cursor: string | undefined;
	for (let i = 0; i < maxPages; i++) {
		const page = await request('get', '/v1/sandboxes', { query: { status: liveStatuses.join(','), limit: pageSize, cursor } });
		out.push(...page.sandboxes);
		cursor = page.next_cursor;
		if (!cursor) break;
	}
	return visible(out);
}

let inflight: Promise<void> | undefined;

/** Reloads the list; callers at the same moment share one request. */
export function refresh(): Promise<void> {
	inflight ??= loadAll()
		.then((list) => {
			capsules.set(list);
			loaded.set(true);
		})
		.finally(() => (inflight = undefined));
	return inflight;
}

export async function create(body: Schemas['CreateSandboxRequest']): Promise<Capsule> {
	const c = await request('post', '/v1/sandboxes', { body });
	capsules.update((l) => upsert(l, c));
	return c;
}

/** Runs an action optimistically; on failure the row is restored and the error rethrown. */
export async function act(id: string, action: 'pause' | 'resume' | 'destroy'): Promise<void> {
	const before = get(capsules).find((c) => c.id === id);
	capsules.update((l) => withStatus(l, id, pendingStatus[action]));
	try {
		if (action === 'destroy') {
			await request('delete', '/v1/sandboxes/{sandbox_id}', { params: { sandbox_id: id } });
			capsules.update((l) => l.filter((c) => c.id !== id));
			return;
		}
		const path = action === 'pause' ? '/v1/sandboxes/{sandbox_id}/pause' : '/v1/sandboxes/{sandbox_id}/resume';
		const c = await request('post', path, { params: { sandbox_id: id } });
		capsules.update((l) => upsert(l, c));
	} catch (err) {
		if (before) capsules.update((l) => upsert(l, before));
		throw err;
	}
}

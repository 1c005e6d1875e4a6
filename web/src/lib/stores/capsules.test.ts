import { get } from 'svelte/store';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { act, capsuleRunningCount, capsules, loaded, maxPages, refresh, runningCount, upsert, visible, type Capsule } from './capsules';

function capsule(id: string, status: Capsule['status']): Capsule {
	return {
		id,
		status,
		created_at: '2026-01-01T00:00:00Z',
		updated_at: '2026-01-01T00:00:00Z',
		created_by: 'usr-1',
		team_id: 'team-1',
		template: 'minimal',
		vcpus: 1,
		memory_mb: 512,
		disk_mb: 1024,
		timeout_sec: 0,
		metadata: {}
	};
}

function answer(status: number, body: unknown) {
	return vi.fn(async () => new Response(status === 204 ? null : JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } }));
}

afterEach(() => vi.unstubAllGlobals());

describe('capsule list helpers', () => {
	it('upsert replaces in place and adds new ones first', () => {
		const l = [capsule('a', 'running'), capsule('b', 'paused')];
		expect(upsert(l, capsule('b', 'running')).map((c) => c.status)).toEqual(['running', 'running']);
		expect(upsert(l, capsule('c', 'pending')).map((c) => c.id)).toEqual(['c', 'a', 'b']);
	});
	it('counts running and hides stopped', () => {
		const l = [capsule('a', 'running'), capsule('b', 'paused'), capsule('c', 'running'), capsule('d', 'stopped')];
		expect(runningCount(l)).toBe(2);
		expect(visible(l).map((c) => c.id)).toEqual(['a', 'b', 'c']);
	});
});

describe('optimistic actions', () => {
	it('pause shows paused at once and keeps the answer', async () => {
		capsules.set([capsule('a', 'running')]);
		let during: string | undefined;
		vi.stubGlobal(
			'fetch',
			vi.fn(async () => {
				during = get(capsules)[0]?.status;
				return new Response(JSON.stringify(capsule('a', 'paused')), { status: 200 });
			})
		);
		await act('a', 'pause');
		expect(during).toBe('paused');
		expect(get(capsules)[0]?.status).toBe('paused');
		expect(get(capsuleRunningCount)).toBe(0);
	});
	it('a refused action puts the row back and says why', async () => {
		capsules.set([capsule('a', 'running')]);
		vi.stubGlobal('fetch', answer(409, { error: { code: 'invalid_state', message: 'the sandbox is not running' } }));
		await expect(act('a', 'resume')).rejects.toMatchObject({ code: 'invalid_state', status: 409 });
		expect(get(capsules)[0]?.status).toBe('running');
		expect(get(capsuleRunningCount)).toBe(1);
	});
	it('destroy removes the row', async () => {
		capsules.set([capsule('a', 'running'), capsule('b', 'running')]);
		vi.stubGlobal('fetch', answer(204, null));
		await act('a', 'destroy');
		expect(get(capsules).map((c) => c.id)).toEqual(['b']);
	});
});

describe('refresh', () => {
	it('callers at the same moment share one request, and hides stopped', async () => {
		const f = answer(200, { sandboxes: [capsule('a', 'running'), capsule('b', 'stopped')] });
		vi.stubGlobal('fetch', f);
		await Promise.all([refresh(), refresh(), refresh()]);
		expect(f).toHaveBeenCalledTimes(1);
		expect(get(capsules).map((c) => c.id)).toEqual(['a']);
		expect(get(loaded)).toBe(true);
		await refresh();
		expect(f).toHaveBeenCalledTimes(2);
	});

	it('follows the pages of live capsules', async () => {
		const pages = [
			{ sandboxes: [capsule('a', 'running'), capsule('b', 'paused')], next_cursor: 'c1' },
			{ sandboxes: [capsule('c', 'running')] }
		];
		const urls: string[] = [];
		const f = vi.fn(async (url: string) => {
			urls.push(url);
			return new Response(JSON.stringify(pages.shift()), { status: 200, headers: { 'Content-Type': 'application/json' } });
		});
		vi.stubGlobal('fetch', f);
		await refresh();
		expect(get(capsules).map((c) => c.id)).toEqual(['a', 'b', 'c']);
		expect(get(capsuleRunningCount)).toBe(2);
		expect(urls).toHaveLength(2);
		const first = new URL(urls[0]!, 'http://x').searchParams;
		expect(first.get('status')).toBe('pending,running,paused,stopping,error,missing');
		expect(first.get('limit')).toBe('200');
		expect(first.get('cursor')).toBeNull();
		expect(new URL(urls[1]!, 'http://x').searchParams.get('cursor')).toBe('c1');
	});

	it('stops after the most pages one refresh walks', async () => {
		const f = vi.fn(async () => new Response(JSON.stringify({ sandboxes: [], next_cursor: 'again' }), { status: 200, headers: { 'Content-Type': 'application/json' } }));
		vi.stubGlobal('fetch', f);
		await refresh();
		expect(f).toHaveBeenCalledTimes(maxPages);
	});
});

import { describe, expect, it } from 'vitest';
import { apiQuery, filtersFrom, searchOf } from './audit';

describe('audit filters', () => {
	it('reads the known, non-empty filters from a URL', () => {
		expect(filtersFrom(new URLSearchParams('resource_type=sandbox&action=&status=error&page=3&actor_id=%20usr-1%20'))).toEqual({
			resource_type: 'sandbox',
			status: 'error',
			actor_id: 'usr-1'
		});
	});
	it.each([
		[{}, ''],
		[{ resource_type: 'sandbox', action: 'paused' }, '?resource_type=sandbox&action=paused'],
		[{ status: '' }, '']
	])('%j -> %s', (f, want) => expect(searchOf(f)).toBe(want));
	it('round-trips through the URL', () => {
		const f = { resource_type: 'api_key', scope: 'platform', since: '2026-12-01T10:00' };
		expect(filtersFrom(new URLSearchParams(searchOf(f)))).toEqual(f);
	});
});

describe('apiQuery', () => {
	it('sends local times as RFC 3339 and adds the cursor', () => {
		const q = apiQuery({ since: '2026-12-01T10:00', resource_type: 'sandbox' }, 'cur', 20);
		expect(q.limit).toBe(20);
		expect(q.cursor).toBe('cur');
		expect(q.resource_type).toBe('sandbox');
		expect(q.since).toBe(new Date('2026-12-01T10:00').toISOString());
	});
	it('passes a value that is no time as typed, for the API to refuse', () => {
		expect(apiQuery({ until: 'yesterday' }).until).toBe('yesterday');
	});
	it('has no cursor on the first page', () => {
		expect(apiQuery({})).toEqual({ limit: 50 });
	});
});

// The time ranges charts offer, as the API names them, and the one a URL asks for.

export interface TimeRange {
	id: string;
	/** For the picker's accessible name: "Last 5 minutes". */
	label: string;
	sec: number;
}

/** GET /v1/sandboxes/stats's ranges; a capsule's history takes all but the last. */
export const usageRanges = [
	{ id: '5m', label: 'Last 5 minutes', sec: 300 },
	{ id: '1h', label: 'Last hour', sec: 3600 },
	{ id: '6h', label: 'Last 6 hours', sec: 6 * 3600 },
	{ id: '24h', label: 'Last 24 hours', sec: 86400 },
	{ id: '30d', label: 'Last 30 days', sec: 30 * 86400 }
] as const satisfies readonly TimeRange[];

export type UsageRange = (typeof usageRanges)[number]['id'];

export const capsuleRanges = usageRanges.filter((r) => r.id !== '30d');

/** The range named by value when ranges has it, else the fallback. */
export function pickRange<R extends TimeRange>(ranges: readonly R[], value: string | null | undefined, fallback: R['id']): R {
	return ranges.find((r) => r.id === value) ?? (ranges.find((r) => r.id === fallback) as R);
}

/** The URL with its `range` parameter set: the picker's links. */
export function withRange(url: URL, id: string): string {
	const u = new URL(url);
	u.searchParams.set('range', id);
	return u.pathname + u.search;
}

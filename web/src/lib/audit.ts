// The audit log page's filters: kept in the URL as the form holds them,
// turned into GET /v1/audit-logs's query when sent.

export const auditFilterKeys = ['resource_type', 'action', 'status', 'actor_id', 'resource_id', 'since', 'until', 'scope'] as const;
export type AuditFilterKey = (typeof auditFilterKeys)[number];
export type AuditFilters = Partial<Record<AuditFilterKey, string>>;

export const auditStatuses = ['success', 'info', 'warning', 'error'] as const;

/** The filters a URL holds (empty values dropped). */
export function filtersFrom(params: URLSearchParams): AuditFilters {
	const f: AuditFilters = {};
	for (const k of auditFilterKeys) {
		const v = params.get(k)?.trim();
		if (v) f[k] = v;
	}
	return f;
}

/** The URL search for filters ("" for none). */
export function searchOf(f: AuditFilters): string {
	const q = new URLSearchParams();
	for (const k of auditFilterKeys) if (f[k]) q.set(k, f[k] as string);
	const s = q.toString();
	return s ? '?' + s : '';
}

/**
 * The API's query: since and until come from datetime-local inputs (the
 * browser's time zone) and go out as RFC 3339; a value that is no time
 * goes out as typed, for the API to refuse in words.
 */
export function apiQuery(f: AuditFilters, cursor?: string, limit = 50): Record<string, string | number> {
	const q: Record<string, string | number> = { limit };
	for (const k of auditFilterKeys) {
		const v = f[k];
		if (!v) continue;
		if (k === 'since' || k === 'until') {
			const d = new Date(v);
			q[k] = Number.isNaN(d.getTime()) ? v : d.toISOString();
		} else q[k] = v;
	}
	if (cursor) q.cursor = cursor;
	return q;
}

// Numbers for people: sizes, durations and relative times.

const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** 1536 -> "1.5 KiB"; whole numbers under 1 KiB as they are. */
export function bytes(n: number): string {
	if (!Number.isFinite(n) || n < 0) return '—';
	let i = 0;
	while (n >= 1024 && i < units.length - 1) {
		n /= 1024;
		i++;
	}
	return i === 0 ? `${n} B` : `${n < 10 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

/** Memory given in MiB, as the API gives it: 512 -> "512 MiB", 2048 -> "2 GiB". */
export function mebibytes(mb: number): string {
	return mb >= 1024 && mb % 1024 === 0 ? `${mb / 1024} GiB` : mb >= 1024 ? `${(mb / 1024).toFixed(1)} GiB` : `${mb} MiB`;
}

/** Seconds as the two largest units: 59 -> "59s", 3725 -> "1h 2m", 90061 -> "1d 1h". */
export function duration(sec: number): string {
	if (!Number.isFinite(sec) || sec < 0) return '—';
	sec = Math.floor(sec);
	const parts: [number, string][] = [
		[Math.floor(sec / 86400), 'd'],
		[Math.floor((sec % 86400) / 3600), 'h'],
		[Math.floor((sec % 3600) / 60), 'm'],
		[sec % 60, 's']
	];
	const first = parts.findIndex(([v]) => v > 0);
	if (first < 0) return '0s';
	return parts
		.slice(first, first + 2)
		.filter(([v]) => v > 0)
		.map(([v, u]) => `${v}${u}`)
		.join(' ');
}

/** A moment relative to now: "just now", "5 minutes ago", "in 2 days". */
export function relative(when: string | Date | null | undefined, now: Date = new Date()): string {
	if (!when) return 'never';
	const t = typeof when === 'string' ? new Date(when) : when;
	if (Number.isNaN(t.getTime())) return '—';
	const diff = (t.getTime() - now.getTime()) / 1000;
	const abs = Math.abs(diff);
	if (abs < 45) return 'just now';
	const steps: [number, Intl.RelativeTimeFormatUnit][] = [
		[60, 'second'],
		[3600, 'minute'],
		[86400, 'hour'],
		[2592000, 'day'],
		[31536000, 'month'],
		[Infinity, 'year']
	];
	const fmt = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });
	let unit = 1;
	for (const [limit, name] of steps) {
		if (abs < limit) return fmt.format(Math.round(diff / unit), name);
		unit = limit;
	}
	return t.toISOString();
}

/** An absolute time for a title attribute. */
export function absolute(when: string | null | undefined): string {
	if (!when) return '';
	const t = new Date(when);
	return Number.isNaN(t.getTime()) ? '' : t.toLocaleString();
}

/** Milliseconds for a step's run time: 350 -> "350 ms", 1500 -> "1.5s", 125000 -> "2m 5s". */
export function millis(ms: number): string {
	if (!Number.isFinite(ms) || ms < 0) return '—';
	if (ms < 1000) return `${Math.round(ms)} ms`;
	if (ms < 60000) return `${(ms / 1000).toFixed(1).replace(/\.0$/, '')}s`;
	return duration(ms / 1000);
}

const integerFormat = new Intl.NumberFormat('en');

/** A count with digit grouping: 12345 -> "12,345". */
export function count(n: number | null | undefined): string {
	return n === null || n === undefined || !Number.isFinite(n) ? '—' : integerFormat.format(Math.round(n));
}

/** A percentage: 3.14159 -> "3.1%", 42 -> "42%". */
export function percent(n: number | null | undefined): string {
	if (n === null || n === undefined || !Number.isFinite(n)) return '—';
	return `${n < 10 && n !== 0 && Math.round(n) !== n ? n.toFixed(1) : Math.round(n)}%`;
}

/**
 * A chart bucket's start for an axis: the time of day for buckets under an
 * hour of a day-long range, the day and hour beyond.
 */
export function bucketLabel(t: string, rangeSec: number, timeZone?: string): string {
	const d = new Date(t);
	if (Number.isNaN(d.getTime())) return '';
	const opts: Intl.DateTimeFormatOptions =
		rangeSec > 86400 ? { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZone } : { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZone };
	if (rangeSec <= 600) opts.second = '2-digit';
	return new Intl.DateTimeFormat('en', opts).format(d);
}

// Polling at the pace the API asks for: each load says how long to wait
// before the next (`poll_after_sec`), the next starts only after the last
// answered (never on top of one), a hidden tab skips its turns, and a
// failed load waits the same time again. Pages show a loading state only
// until the first answer; later ones update in place.

type Timers = { set: (f: () => void, ms: number) => unknown; clear: (h: unknown) => void };
const realTimers: Timers = { set: (f, ms) => setTimeout(f, ms), clear: (h) => clearTimeout(h as ReturnType<typeof setTimeout>) };

export interface PollOptions {
	/** The wait when a load gives none (it failed, or has no hint). */
	fallbackSec?: number;
	/** Bounds on the API's hint, so a bad answer cannot make a tight loop. */
	minSec?: number;
	maxSec?: number;
	hidden?: () => boolean;
	timers?: Timers;
}

/**
 * Runs load now and again after each answer's delay in seconds; returns a
 * stop function. load returns the seconds to wait, or undefined.
 */
export function poll(load: () => Promise<number | undefined>, opts: PollOptions = {}): () => void {
	const { fallbackSec = 10, minSec = 1, maxSec = 600, timers = realTimers } = opts;
	const hidden = opts.hidden ?? (() => typeof document !== 'undefined' && document.hidden);
	let stopped = false;
	let timer: unknown;
	let first = true;
	async function tick() {
		let wait: number | undefined;
		// The first load runs even in a hidden tab: the page needs its data.
		if (first || !hidden()) {
			first = false;
			try {
				wait = await load();
			} catch {
				wait = undefined;
			}
		}
		if (stopped) return;
		timer = timers.set(() => void tick(), nextDelayMs(wait, fallbackSec, minSec, maxSec));
	}
	void tick();
	return () => {
		stopped = true;
		timers.clear(timer);
	};
}

/** The wait in ms for a hint in seconds, bounded; the fallback for none. */
export function nextDelayMs(hintSec: number | undefined, fallbackSec: number, minSec = 1, maxSec = 600): number {
	const s = hintSec === undefined || !Number.isFinite(hintSec) ? fallbackSec : hintSec;
	return Math.min(maxSec, Math.max(minSec, s)) * 1000;
}

/**
 * Polls an API answer that says when to ask again (`poll_after_sec`): each
 * answer goes to onAnswer, each failure to onError; after stop, answers
 * still in flight are dropped (a page that changed its range or capsule
 * never shows the old one's).
 */
export function pollAnswer<T extends { poll_after_sec: number }>(
	fetch: () => Promise<T>,
	onAnswer: (t: T) => void,
	onError: (err: unknown) => void,
	opts?: PollOptions
): () => void {
	let live = true;
	const stop = poll(async () => {
		try {
			const t = await fetch();
			if (live) onAnswer(t);
			return t.poll_after_sec;
		} catch (err) {
			if (live) onError(err);
			throw err;
		}
	}, opts);
	return () => {
		live = false;
		stop();
	};
}

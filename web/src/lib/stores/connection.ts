// Whether the control plane answers. When a request cannot reach it, a
// banner shows and one probe at a time retries /health with exponential
// backoff (never a tight loop); the first answer clears the banner.
import { writable, type Readable } from 'svelte/store';

export interface ConnectionState {
	down: boolean;
	/** Seconds until the next probe while down. */
	retryInSec: number;
	attempt: number;
}

/** The wait before probe number attempt (0-based): 1s, 2s, 4s ... capped. */
export function backoffMs(attempt: number, baseMs = 1000, maxMs = 30000): number {
	return Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
}

export interface Connection extends Readable<ConnectionState> {
	reached(): void;
	unreachable(): void;
	/** Probe now (the banner's "Retry now"). */
	retry(): void;
	stop(): void;
}

type Probe = () => Promise<boolean>;
type Timers = { set: (f: () => void, ms: number) => unknown; clear: (h: unknown) => void };

const realTimers: Timers = { set: (f, ms) => setTimeout(f, ms), clear: (h) => clearTimeout(h as ReturnType<typeof setTimeout>) };

export function createConnection(probe: Probe, timers: Timers = realTimers): Connection {
	const state = writable<ConnectionState>({ down: false, retryInSec: 0, attempt: 0 });
	let attempt = 0;
	let timer: unknown;
	let probing = false;

	function schedule() {
		timers.clear(timer);
		const ms = backoffMs(attempt);
		state.set({ down: true, retryInSec: Math.round(ms / 1000), attempt });
		timer = timers.set(() => void run(), ms);
	}
	async function run() {
		if (probing) return;
		probing = true;
		let ok = false;
		try {
			ok = await probe();
		} catch {
			ok = false;
		}
		probing = false;
		if (ok) reached();
		else {
			attempt++;
			schedule();
		}
	}
	function reached() {
		timers.clear(timer);
		timer = undefined;
		attempt = 0;
		state.set({ down: false, retryInSec: 0, attempt: 0 });
	}
	return {
		subscribe: state.subscribe,
		reached,
		unreachable() {
			// Already retrying: the running schedule stands.
			if (timer !== undefined || probing) return;
			schedule();
		},
		retry() {
			timers.clear(timer);
			timer = undefined;
			void run();
		},
		stop() {
			timers.clear(timer);
		}
	};
}

// Template builds on the admin page: what a build's progress reads as,
// the live log events folded into a build, the Create Template form as
// the API's request, and the poller that runs only while builds are active.
import { request, type Schemas } from '$lib/api/client';

export type Build = Schemas['Build'];
export type BuildStep = Schemas['BuildStep'];
export type BuildRequest = Schemas['BuildRequest'];

/** Queued or running: the page keeps polling while any build is. */
export function isActive(b: Pick<Build, 'status'>): boolean {
	return b.status === 'queued' || b.status === 'running';
}

export function anyActive(list: Pick<Build, 'status'>[]): boolean {
	return list.some(isActive);
}

/** Steps done as a whole percent (0-100); a build with no steps is done when it succeeded. */
export function progressPercent(b: Pick<Build, 'progress' | 'status'>): number {
	const { done, total } = b.progress;
	if (total <= 0) return b.status === 'succeeded' ? 100 : 0;
	return Math.max(0, Math.min(100, Math.round((done / total) * 100)));
}

/** "2 of 3 steps", "1 step". */
export function progressLabel(b: Pick<Build, 'progress'>): string {
	const { done, total } = b.progress;
	const unit = total === 1 ? 'step' : 'steps';
	return done === total ? `${total} ${unit}` : `${done} of ${total} ${unit}`;
}

function withProgress(b: Build, steps: BuildStep[]): Build {
	return { ...b, steps, progress: { done: steps.filter((s) => s.status === 'succeeded').length, total: steps.length } };
}

/** The live log stream's events (GET /v1/admin/builds/{id}/logs). */
export type LogEvent =
	| { type: 'step'; index: number; step: BuildStep }
	| { type: 'output'; index: number; stream: 'stdout' | 'stderr'; data: string }
	| { type: 'end'; status: Build['status'] };

/** The most output kept per step and stream while following a build. */
export const maxLiveOutput = 64 * 1024;

/** A build with one live event applied; unknown steps leave it as it was. */
export function applyEvent(b: Build, ev: LogEvent): Build {
	if (ev.type === 'end') return { ...b, status: ev.status };
	const cur = b.steps[ev.index];
	if (!cur) return b;
	const steps = b.steps.slice();
	if (ev.type === 'step') {
		steps[ev.index] = ev.step;
		return { ...withProgress(b, steps), status: b.status === 'queued' ? 'running' : b.status, current_step: ev.index };
	}
	const text = (cur[ev.stream] + ev.data).slice(-maxLiveOutput);
	steps[ev.index] = { ...cur, [ev.stream]: text };
	return { ...b, steps };
}

/**
 * The newest page as polled, then older pages loaded by "Load older"; a
 * build in both is the polled one (the fresher).
 */
export function mergePages(newest: Build[], older: Build[]): Build[] {
	const seen = new Set(newest.map((b) => b.id));
	return [...newest, ...older.filter((b) => !seen.has(b.id))];
}

/** The Create Template dialog's fields, as typed. */
export interface TemplateForm {
	name: string;
	baseTemplate: string;
	recipe: string;
	kind: 'image' | 'snapshot';
	healthcheck: string;
	vcpus: string;
	memoryMB: string;
	diskMB: string;
}

export const emptyForm = (): TemplateForm => ({ name: '', baseTemplate: 'minimal', recipe: '', kind: 'image', healthcheck: '', vcpus: '', memoryMB: '', diskMB: '' });

/** A field the form refuses before sending, in the API's terms. */
export class FormError extends Error {
	constructor(
		readonly field: string,
		message: string
	) {
		super(message);
	}
}

function optionalInt(field: string, label: string, v: string): number | undefined {
	const t = v.trim();
	if (t === '') return undefined;
	if (!/^\d+$/.test(t) || Number(t) < 1) throw new FormError(field, `${label} must be a whole number above 0, or empty for the base template's.`);
	return Number(t);
}

/**
 * The request POST /v1/admin/builds takes. The kind is the API's rule: a
 * healthcheck makes a snapshot template, none an image, so a snapshot
 * needs one and an image sends none. Empty specs take the base template's.
 */
export function toBuildRequest(f: TemplateForm): BuildRequest {
	const name = f.name.trim();
	if (!name) throw new FormError('name', 'A template name is required.');
	if (!f.recipe.split('\n').some((l) => l.trim() && !l.trim().startsWith('#'))) throw new FormError('recipe_text', 'The recipe needs at least one step.');
	const req: BuildRequest = { name, recipe_text: f.recipe };
	if (f.baseTemplate.trim()) req.base_template = f.baseTemplate.trim();
	if (f.kind === 'snapshot') {
		if (!f.healthcheck.trim()) throw new FormError('healthcheck', 'A snapshot template needs a healthcheck command: it is snapshotted once the command succeeds.');
		req.healthcheck = { cmd: f.healthcheck.trim() };
	}
	const vcpus = optionalInt('vcpus', 'vCPUs', f.vcpus);
	const memory = optionalInt('memory_mb', 'Memory', f.memoryMB);
	const disk = optionalInt('disk_mb', 'Disk', f.diskMB);
	if (vcpus !== undefined) req.vcpus = vcpus;
	if (memory !== undefined) req.memory_mb = memory;
	if (disk !== undefined) req.disk_mb = disk;
	return req;
}

type Timers = { set: (f: () => void, ms: number) => unknown; clear: (h: unknown) => void };
const realTimers: Timers = { set: (f, ms) => setTimeout(f, ms), clear: (h) => clearTimeout(h as ReturnType<typeof setTimeout>) };

/** How often the builds list refreshes while a build is queued or running. */
export const pollMs = 3000;

export interface Poller {
	/** Look at a fresh list: keep polling while any is active, stop when none is. */
	seen(list: Pick<Build, 'status'>[]): void;
	stop(): void;
}

/**
 * Calls load every interval while the last list seen has an active build,
 * one call at a time (the next is scheduled after an answer), and not at
 * all once none is active; seen() with a new active build starts it again.
 */
export function createPoller(load: () => Promise<void>, timers: Timers = realTimers, interval = pollMs): Poller {
	let timer: unknown;
	let stopped = false;
	let scheduled = false;
	function schedule() {
		if (scheduled || stopped) return;
		scheduled = true;
		timer = timers.set(async () => {
			scheduled = false;
			// load() reports its list through seen(), which schedules again.
			await load().catch(() => schedule());
		}, interval);
	}
	return {
		seen(list) {
			if (anyActive(list)) schedule();
			else if (scheduled) {
				timers.clear(timer);
				scheduled = false;
			}
		},
		stop() {
			stopped = true;
			timers.clear(timer);
		}
	};
}

/** One page of builds, newest first. */
export function listBuilds(cursor?: string): Promise<{ builds: Build[]; next_cursor?: string }> {
	return request('get', '/v1/admin/builds', { query: { limit: 20, cursor } });
}

export function submitBuild(body: BuildRequest): Promise<Build> {
	return request('post', '/v1/admin/builds', { body });
}

export interface Follow {
	close(): void;
}

/**
 * Follows a build's live log stream (server-sent events on the session
 * cookie): the build as recorded, then each event, until the end event,
 * after which the stream is closed (so the browser does not reconnect).
 * onLost: the stream failed for good (the caller falls back to polling).
 */
export function followBuild(id: string, on: { build(b: Build): void; event(ev: LogEvent): void; lost(): void }): Follow {
	const es = new EventSource(`/v1/admin/builds/${encodeURIComponent(id)}/logs`);
	const parse = (m: MessageEvent) => JSON.parse(m.data as string) as unknown;
	es.addEventListener('build', (m) => on.build(parse(m) as Build));
	for (const type of ['step', 'output'] as const) es.addEventListener(type, (m) => on.event({ ...(parse(m) as object), type } as LogEvent));
	es.addEventListener('end', (m) => {
		es.close();
		on.event({ ...(parse(m) as object), type: 'end' } as LogEvent);
	});
	es.onerror = () => {
		// CONNECTING: the browser retries by itself; CLOSED: it gave up.
		if (es.readyState === EventSource.CLOSED) on.lost();
	};
	return { close: () => es.close() };
}

export function cancelBuild(id: string): Promise<Build> {
	return request('post', '/v1/admin/builds/{build_id}/cancel', { params: { build_id: id } });
}

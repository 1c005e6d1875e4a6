import { describe, expect, it, vi } from 'vitest';
import { anyActive, applyEvent, createPoller, emptyForm, FormError, maxLiveOutput, mergePages, progressLabel, progressPercent, toBuildRequest, type Build, type BuildStep } from './builds';

function step(index: number, status: BuildStep['status']): BuildStep {
	return { index, line: index + 1, cmd: `echo ${index}`, status, exit_code: null, stdout: '', stderr: '', started_at: null, duration_ms: 0 };
}

function build(id: string, status: Build['status'], steps: BuildStep[] = [step(0, 'pending'), step(1, 'pending')]): Build {
	const done = steps.filter((s) => s.status === 'succeeded').length;
	return {
		id,
		name: 'tpl',
		base_template: 'minimal',
		status,
		kind: 'image',
		recipe: steps.map((s) => s.cmd),
		healthcheck: null,
		vcpus: 1,
		memory_mb: 512,
		disk_mb: 1024,
		current_step: 0,
		progress: { done, total: steps.length },
		steps,
		template_id: null,
		sandbox_id: null,
		attempts: 0,
		created_by: 'usr-1',
		created_at: '2026-01-01T00:00:00Z',
		started_at: null,
		finished_at: null
	};
}

describe('build progress', () => {
	it.each([
		{ done: 0, total: 3, status: 'running', pct: 0, label: '0 of 3 steps' },
		{ done: 1, total: 3, status: 'running', pct: 33, label: '1 of 3 steps' },
		{ done: 2, total: 3, status: 'failed', pct: 67, label: '2 of 3 steps' },
		{ done: 3, total: 3, status: 'succeeded', pct: 100, label: '3 steps' },
		{ done: 1, total: 1, status: 'succeeded', pct: 100, label: '1 step' },
		{ done: 0, total: 0, status: 'succeeded', pct: 100, label: '0 steps' },
		{ done: 0, total: 0, status: 'queued', pct: 0, label: '0 steps' }
	] as const)('$done/$total $status: $pct% "$label"', ({ done, total, status, pct, label }) => {
		const b = { status, progress: { done, total } };
		expect(progressPercent(b)).toBe(pct);
		expect(progressLabel(b)).toBe(label);
	});

	it('active means queued or running', () => {
		expect(anyActive([{ status: 'succeeded' }, { status: 'queued' }])).toBe(true);
		expect(anyActive([{ status: 'running' }])).toBe(true);
		expect(anyActive([{ status: 'succeeded' }, { status: 'failed' }, { status: 'cancelled' }])).toBe(false);
		expect(anyActive([])).toBe(false);
	});
});

describe('live log events', () => {
	it('a step event replaces the step, recounts progress and starts a queued build', () => {
		const b = applyEvent(build('b', 'queued'), { type: 'step', index: 0, step: { ...step(0, 'succeeded'), exit_code: 0 } });
		expect(b.status).toBe('running');
		expect(b.steps[0]!.status).toBe('succeeded');
		expect(b.progress).toEqual({ done: 1, total: 2 });
		expect(b.current_step).toBe(0);
	});

	it('output appends to its stream, keeping the tail', () => {
		let b = applyEvent(build('b', 'running'), { type: 'output', index: 1, stream: 'stdout', data: 'hello ' });
		b = applyEvent(b, { type: 'output', index: 1, stream: 'stdout', data: 'world' });
		b = applyEvent(b, { type: 'output', index: 1, stream: 'stderr', data: 'warn' });
		expect(b.steps[1]!.stdout).toBe('hello world');
		expect(b.steps[1]!.stderr).toBe('warn');
		b = applyEvent(b, { type: 'output', index: 1, stream: 'stdout', data: 'x'.repeat(maxLiveOutput) });
		expect(b.steps[1]!.stdout.length).toBe(maxLiveOutput);
		expect(b.steps[1]!.stdout.endsWith('x')).toBe(true);
	});

	it('end sets the final status; an unknown step changes nothing', () => {
		const b = build('b', 'running');
		expect(applyEvent(b, { type: 'end', status: 'succeeded' }).status).toBe('succeeded');
		expect(applyEvent(b, { type: 'output', index: 9, stream: 'stdout', data: 'x' })).toBe(b);
	});
});

describe('paging', () => {
	it('older pages follow the polled page, which wins for a build in both', () => {
		const fresh = build('b2', 'succeeded');
		const merged = mergePages([build('b3', 'running'), fresh], [build('b2', 'running'), build('b1', 'failed')]);
		expect(merged.map((b) => b.id)).toEqual(['b3', 'b2', 'b1']);
		expect(merged[1]).toBe(fresh);
	});
});

describe('the Create Template form', () => {
	const base = { ...emptyForm(), name: ' hello ', recipe: '# a comment\necho hello > /hello\n' };

	it('an image template sends the recipe and no healthcheck', () => {
		expect(toBuildRequest({ ...base, healthcheck: 'ignored' })).toEqual({ name: 'hello', base_template: 'minimal', recipe_text: base.recipe });
	});

	it('a snapshot template sends its healthcheck and the specs given', () => {
		expect(toBuildRequest({ ...base, kind: 'snapshot', healthcheck: ' true ', vcpus: '2', memoryMB: '1024', diskMB: '' })).toEqual({
			name: 'hello',
			base_template: 'minimal',
			recipe_text: base.recipe,
			healthcheck: { cmd: 'true' },
			vcpus: 2,
			memory_mb: 1024
		});
	});

	it.each([
		{ change: { name: '  ' }, field: 'name' },
		{ change: { recipe: '# only a comment\n\n' }, field: 'recipe_text' },
		{ change: { kind: 'snapshot' as const, healthcheck: '' }, field: 'healthcheck' },
		{ change: { vcpus: '1.5' }, field: 'vcpus' },
		{ change: { memoryMB: '0' }, field: 'memory_mb' },
		{ change: { diskMB: '-1' }, field: 'disk_mb' }
	])('refuses $field', ({ change, field }) => {
		try {
			toBuildRequest({ ...base, ...change });
			expect.unreachable();
		} catch (err) {
			expect(err).toBeInstanceOf(FormError);
			expect((err as FormError).field).toBe(field);
		}
	});
});

describe('the poller', () => {
	function fakeTimers() {
		const pending = new Map<number, () => void>();
		let n = 0;
		return {
			timers: { set: (f: () => void) => (pending.set(++n, f), n), clear: (h: unknown) => void pending.delete(h as number) },
			count: () => pending.size,
			async fire() {
				const [id, f] = [...pending][0]!;
				pending.delete(id);
				f();
				await Promise.resolve();
				await Promise.resolve();
			}
		};
	}

	it('polls while a build is active, once at a time, and stops when none is', async () => {
		const t = fakeTimers();
		let lists = [[{ status: 'running' }], [{ status: 'succeeded' }]] as { status: Build['status'] }[][];
		const p = createPoller(async () => void p.seen(lists.shift() ?? []), t.timers);
		p.seen([{ status: 'succeeded' }]);
		expect(t.count()).toBe(0);
		p.seen([{ status: 'queued' }]);
		p.seen([{ status: 'queued' }]);
		expect(t.count()).toBe(1);
		await t.fire(); // sees running: again
		expect(t.count()).toBe(1);
		await t.fire(); // sees succeeded: stops
		expect(t.count()).toBe(0);
		lists = [];
		p.seen([{ status: 'running' }]);
		expect(t.count()).toBe(1);
		p.stop();
		expect(t.count()).toBe(0);
		p.seen([{ status: 'running' }]);
		expect(t.count()).toBe(0);
	});

	it('a failed load tries again at the next interval', async () => {
		const t = fakeTimers();
		const load = vi.fn(async () => {
			throw new Error('down');
		});
		const p = createPoller(load, t.timers);
		p.seen([{ status: 'running' }]);
		await t.fire();
		expect(load).toHaveBeenCalledTimes(1);
		expect(t.count()).toBe(1);
		p.stop();
	});
});

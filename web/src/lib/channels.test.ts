import { describe, expect, it } from 'vitest';
import { choiceOf, configFor, eventsOf, providerOf, providers } from './channels';

describe('providers', () => {
	it('every provider has fields with labels', () => {
		for (const p of providers) {
			expect(p.fields.length).toBeGreaterThan(0);
			for (const f of p.fields) expect(f.label).not.toBe('');
		}
	});
	it.each([
		['telegram', ['bot_token', 'chat_id']],
		['matrix', ['homeserver_url', 'access_token', 'room_id']],
		['webhook', ['url', 'secret']],
		['slack', ['webhook_url']]
	])('%s asks for %j', (id, fields) => expect(providerOf(id).fields.map((f) => f.name)).toEqual(fields));
});

describe('configFor', () => {
	it.each([
		['drops an empty optional field', 'webhook', { url: ' http://127.0.0.1:9/hook ', secret: '' }, { url: 'http://127.0.0.1:9/hook' }],
		['keeps a set optional field', 'webhook', { url: 'u', secret: 's' }, { url: 'u', secret: 's' }],
		['sends an empty required field, for the API to name', 'telegram', { chat_id: '@x' }, { bot_token: '', chat_id: '@x' }],
		['ignores fields of another provider', 'slack', { webhook_url: 'w', url: 'stale' }, { webhook_url: 'w' }]
	] as const)('%s', (_, provider, values, want) => expect(configFor(provider, values)).toEqual(want));
});

describe('events', () => {
	it.each([
		[{ groups: ['sandbox.*'], other: '' }, ['sandbox.*']],
		[{ groups: ['*'], other: 'host.marked_down, sandbox.paused  team.renamed' }, ['*', 'host.marked_down', 'sandbox.paused', 'team.renamed']],
		[{ groups: ['channel.*'], other: 'channel.*' }, ['channel.*']],
		[{ groups: [], other: ' ' }, []]
	])('%j -> %j', (c, want) => expect(eventsOf(c)).toEqual(want));
	it('round-trips a channel', () => {
		const ev = ['sandbox.*', 'host.marked_down'];
		expect(eventsOf(choiceOf(ev))).toEqual(ev);
	});
});

// What the channels page asks for per provider (the fields of
// internal/controlplane/channels' provider table; the API checks them and
// names the field it refuses), and the event filters as a form holds them.
import type { Schemas } from '$lib/api/client';
import { resourceTypes } from '$lib/events';

export type Provider = Schemas['ChannelProvider'];

export interface ConfigField {
	name: string;
	label: string;
	hint: string;
	/** Shown masked: it is a credential. */
	secret: boolean;
	optional?: boolean;
	type: 'url' | 'text';
}

const webhookURL = (hint: string): ConfigField => ({ name: 'webhook_url', label: 'Webhook URL', hint, secret: true, type: 'url' });

export const providers: { id: Provider; label: string; fields: ConfigField[] }[] = [
	{ id: 'webhook', label: 'Webhook (signed)', fields: [
		{ name: 'url', label: 'URL', hint: 'Receives each event as JSON, signed in X-WRENN-SIGNATURE.', secret: false, type: 'url' },
		{ name: 'secret', label: 'Signing secret', hint: 'At least 16 characters; leave empty to have one generated and shown once.', secret: true, optional: true, type: 'text' }
	] },
	{ id: 'slack', label: 'Slack', fields: [webhookURL('https://hooks.slack.com/services/…')] },
	{ id: 'discord', label: 'Discord', fields: [webhookURL('https://discord.com/api/webhooks/…')] },
	{ id: 'teams', label: 'Microsoft Teams', fields: [webhookURL('A Power Automate workflow URL (https://….logic.azure.com/… or https://….api.powerplatform.com/…).')] },
	{ id: 'googlechat', label: 'Google Chat', fields: [webhookURL('https://chat.googleapis.com/v1/spaces/…')] },
	{ id: 'telegram', label: 'Telegram', fields: [
		{ name: 'bot_token', label: 'Bot token', hint: 'From BotFather: <digits>:<token>.', secret: true, type: 'text' },
		{ name: 'chat_id', label: 'Chat ID', hint: 'A numeric chat id or an @channelname.', secret: false, type: 'text' }
	] },
	{ id: 'matrix', label: 'Matrix', fields: [
		{ name: 'homeserver_url', label: 'Homeserver URL', hint: 'https://matrix.example.org', secret: false, type: 'url' },
		{ name: 'access_token', label: 'Access token', hint: 'Of the account that posts.', secret: true, type: 'text' },
		{ name: 'room_id', label: 'Room ID', hint: 'A room id such as !abc123:example.org (not an alias).', secret: false, type: 'text' }
	] }
];

export function providerOf(id: string): (typeof providers)[number] {
	return providers.find((p) => p.id === id) ?? providers[0]!;
}

/** The config to send: the provider's fields only, empty optional ones left out. */
export function configFor(provider: Provider, values: Record<string, string>): Record<string, string> {
	const out: Record<string, string> = {};
	for (const f of providerOf(provider).fields) {
		const v = (values[f.name] ?? '').trim();
		if (v || !f.optional) out[f.name] = v;
	}
	return out;
}

/** The wildcards the form offers as checkboxes: every event, or each resource's. */
export const eventGroups = ['*', ...resourceTypes.map((r) => `${r}.*`)];

export interface EventChoice {
	groups: string[];
	/** Further event types, comma- or space-separated (`sandbox.paused`). */
	other: string;
}

/** The events list to send: chosen groups, then the typed types, without repeats. */
export function eventsOf(c: EventChoice): string[] {
	const typed = c.other.split(/[\s,]+/).filter(Boolean);
	return [...new Set([...c.groups, ...typed])];
}

/** A channel's events as the form shows them. */
export function choiceOf(events: string[]): EventChoice {
	return { groups: events.filter((e) => eventGroups.includes(e)), other: events.filter((e) => !eventGroups.includes(e)).join(', ') };
}

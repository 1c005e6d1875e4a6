// The resources events are about (the first half of an event type,
// `sandbox.paused`; docs/events.md lists them): the audit log's filter and
// the channels' event picker offer them. The API checks every value, so a
// type this list lacks is still accepted typed by hand.
export const resourceTypes = ['sandbox', 'snapshot', 'team', 'api_key', 'member', 'host', 'auth', 'user', 'identity', 'channel', 'template'] as const;

export const resourceLabels: Record<(typeof resourceTypes)[number], string> = {
	sandbox: 'Capsules',
	snapshot: 'Snapshots',
	team: 'Team',
	api_key: 'API keys',
	member: 'Members',
	host: 'Hosts',
	auth: 'Sign-in',
	user: 'Users',
	identity: 'Linked accounts',
	channel: 'Channels',
	template: 'Templates'
};

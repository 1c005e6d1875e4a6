// The dashboard's sections. A feature's pages join the shell by adding an
// entry here.
export interface NavItem {
	href: string;
	label: string;
	/** The item is current for every path under this prefix. */
	prefix: string;
	/** Shows the running-capsule count. */
	badge?: 'running';
	adminOnly?: boolean;
}

export const nav: NavItem[] = [
	{ href: '/dashboard/capsules/list', label: 'Capsules', prefix: '/dashboard/capsules', badge: 'running' },
	{ href: '/dashboard/keys', label: 'API keys', prefix: '/dashboard/keys' },
	{ href: '/dashboard/team', label: 'Team', prefix: '/dashboard/team' },
	{ href: '/dashboard/hosts', label: 'Hosts', prefix: '/dashboard/hosts' },
	{ href: '/dashboard/audit', label: 'Audit log', prefix: '/dashboard/audit' },
	{ href: '/dashboard/channels', label: 'Channels', prefix: '/dashboard/channels' }
];

/** Tabs of the capsules section. */
export const capsuleTabs: { href: string; label: string }[] = [
	{ href: '/dashboard/capsules/list', label: 'List' },
	{ href: '/dashboard/capsules/stats', label: 'Stats' }
];

export function isCurrent(item: NavItem, pathname: string): boolean {
	return pathname === item.prefix || pathname.startsWith(item.prefix + '/');
}

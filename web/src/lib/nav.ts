// The dashboard's sections. A feature's pages join the shell by adding an
// entry here (audit log, channels, capsule stats and the admin templates
// arrive with their APIs).
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
	{ href: '/dashboard/hosts', label: 'Hosts', prefix: '/dashboard/hosts' }
];

/** Tabs of the capsules section (the stats tab joins with its API). */
export const capsuleTabs: { href: string; label: string }[] = [{ href: '/dashboard/capsules/list', label: 'List' }];

export function isCurrent(item: NavItem, pathname: string): boolean {
	return pathname === item.prefix || pathname.startsWith(item.prefix + '/');
}

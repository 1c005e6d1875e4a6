// The dashboard's sections. A feature's pages join the shell by adding an
// entry here; the admin area has its own sidebar, adminNav.
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
	{ href: '/dashboard/channels', label: 'Channels', prefix: '/dashboard/channels' },
	{ href: '/admin/templates', label: 'Admin', prefix: '/admin', adminOnly: true }
];

/** The admin area's sidebar (platform admins only). */
export const adminNav: NavItem[] = [{ href: '/admin/templates', label: 'Templates', prefix: '/admin/templates' }];

/** The items a user sees: admin-only ones for platform admins. */
export function visibleNav(items: NavItem[], isAdmin: boolean): NavItem[] {
	return items.filter((i) => !i.adminOnly || isAdmin);
}

/** Tabs of the capsules section. */
export const capsuleTabs: { href: string; label: string }[] = [
	{ href: '/dashboard/capsules/list', label: 'List' },
	{ href: '/dashboard/capsules/stats', label: 'Stats' }
];

export function isCurrent(item: NavItem, pathname: string): boolean {
	return pathname === item.prefix || pathname.startsWith(item.prefix + '/');
}

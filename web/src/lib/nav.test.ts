import { describe, expect, it } from 'vitest';
import { adminNav, isCurrent, nav, visibleNav } from './nav';

describe('navigation', () => {
	it('admin-only sections show to platform admins only', () => {
		const admin = visibleNav(nav, true).map((i) => i.label);
		const member = visibleNav(nav, false).map((i) => i.label);
		expect(admin).toContain('Admin');
		expect(member).not.toContain('Admin');
		expect(member.length).toBe(admin.length - 1);
	});

	it.each([
		['/admin/templates', true],
		['/admin/templates/x', true],
		['/admin/templatesx', false],
		['/dashboard/keys', false]
	])('the Templates item is current at %s: %s', (path, want) => {
		expect(isCurrent(adminNav[0]!, path)).toBe(want);
	});
});

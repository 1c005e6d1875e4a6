// Keyboard movement in a tab list (WAI-ARIA tabs pattern): arrows wrap,
// Home and End jump; other keys are not the tab list's.

/** The tab a key moves to from current, or undefined when the key is not a tab-list key. */
export function tabForKey<T>(tabs: readonly T[], current: T, key: string): T | undefined {
	const i = tabs.indexOf(current);
	const n = tabs.length;
	if (n === 0) return undefined;
	switch (key) {
		case 'ArrowRight':
			return tabs[(i + 1) % n];
		case 'ArrowLeft':
			return tabs[(i - 1 + n) % n];
		case 'Home':
			return tabs[0];
		case 'End':
			return tabs[n - 1];
		default:
			return undefined;
	}
}

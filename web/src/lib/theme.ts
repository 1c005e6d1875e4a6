// Light, dark, or the system's choice (the default), kept per browser.
export type Theme = 'light' | 'dark' | 'system';
const key = 'wrenn-theme';

export function loadTheme(): Theme {
	const t = localStorage.getItem(key);
	return t === 'light' || t === 'dark' ? t : 'system';
}

export function applyTheme(t: Theme): void {
	if (t === 'system') {
		delete document.documentElement.dataset.theme;
		localStorage.removeItem(key);
	} else {
		document.documentElement.dataset.theme = t;
		localStorage.setItem(key, t);
	}
}

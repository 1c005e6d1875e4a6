// Paths inside a capsule (always absolute, '/'-separated).

export function joinPath(dir: string, name: string): string {
	return (dir.endsWith('/') ? dir : dir + '/') + name.replace(/^\/+/, '');
}

export function parentPath(p: string): string {
	const trimmed = p.replace(/\/+$/, '');
	const i = trimmed.lastIndexOf('/');
	return i <= 0 ? '/' : trimmed.slice(0, i);
}

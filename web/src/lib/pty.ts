// The PTY WebSocket's wire details (docs/api.md, "pty").

export function ptyURL(loc: { protocol: string; host: string }, capsuleID: string, cols: number, rows: number): string {
	const scheme = loc.protocol === 'https:' ? 'wss' : 'ws';
	return `${scheme}://${loc.host}/v1/sandboxes/${encodeURIComponent(capsuleID)}/pty?cols=${cols}&rows=${rows}`;
}

/** Output chunks are text, or base64 when they are not valid UTF-8. */
export function decodeOutput(data: string, encoding?: string): string | Uint8Array {
	if (encoding !== 'base64') return data;
	const bin = atob(data);
	const out = new Uint8Array(bin.length);
	for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
	return out;
}

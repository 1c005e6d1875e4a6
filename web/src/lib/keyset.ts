// Keyset paging with opaque cursors: the API only pages forward (each
// answer's `next_cursor`), so going back means remembering the cursors of
// the pages before. A trail holds the cursor of every page up to the one
// shown; the first page has none.

export interface Trail {
	cursors: (string | undefined)[];
}

export const firstPage = (): Trail => ({ cursors: [undefined] });

/** The page after the one shown, reached with its answer's next cursor. */
export function older(t: Trail, next: string): Trail {
	return { cursors: [...t.cursors, next] };
}

/** The page before the one shown (the first stays first). */
export function newer(t: Trail): Trail {
	return t.cursors.length > 1 ? { cursors: t.cursors.slice(0, -1) } : t;
}

export function cursorOf(t: Trail): string | undefined {
	return t.cursors[t.cursors.length - 1];
}

/** 1-based. */
export function pageNumber(t: Trail): number {
	return t.cursors.length;
}

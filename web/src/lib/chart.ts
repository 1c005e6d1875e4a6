// What the dashboard's line charts show, apart from Chart.js: their series
// and axes, and a summary that the page states in words (and tests read).

export interface Series {
	label: string;
	/** One value per label; null where there is no sample (a gap). */
	data: (number | null)[];
	/** The axis it is read against (the id of one of the chart's axes). */
	axis: 'y' | 'y1';
	/** A CSS custom property holding the line's colour. */
	color: string;
}

export interface Axis {
	id: 'y' | 'y1';
	title: string;
	/** Whole numbers only (counts). */
	integer?: boolean;
	/** Tick and tooltip text for a value. */
	format: (v: number) => string;
	/** A fixed top, such as 100 for percentages. */
	max?: number;
}

export interface Summary {
	points: number;
	max: number;
}

/** How many values are present, and the largest, over all series. */
export function summarize(series: Series[]): Summary {
	let points = 0;
	let max = 0;
	for (const s of series)
		for (const v of s.data)
			if (v !== null && Number.isFinite(v)) {
				points++;
				if (v > max) max = v;
			}
	return { points, max };
}

/** The latest value present of each series, for the chart's text alternative. */
export function describeLatest(series: Series[], axes: Axis[]): string {
	const parts = series.map((s) => {
		const last = [...s.data].reverse().find((v) => v !== null);
		const fmt = axes.find((a) => a.id === s.axis)?.format ?? String;
		return `${s.label} ${last === undefined || last === null ? 'no data' : fmt(last)}`;
	});
	return parts.length ? `Latest: ${parts.join(', ')}.` : '';
}

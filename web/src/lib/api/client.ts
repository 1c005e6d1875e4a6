// The dashboard's API client. Paths, bodies and answers are typed from the
// control plane's OpenAPI document (schema.d.ts is generated from it by
// `make web`), so a route or schema change the dashboard does not follow
// fails the build's type check.
import type { components, paths } from './schema';

export type Schemas = components['schemas'];
type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';
type Path = keyof paths;
type Op<P extends Path, M extends Method> = NonNullable<paths[P][M]>;

type JSONOf<C> = C extends { content: { 'application/json': infer B } } ? B : undefined;
type BodyOf<O> = O extends { requestBody: infer R } ? JSONOf<R> : O extends { requestBody?: infer R } ? JSONOf<NonNullable<R>> | undefined : undefined;
type Ok<R> = 200 extends keyof R ? R[200] : 201 extends keyof R ? R[201] : 202 extends keyof R ? R[202] : undefined;
export type Answer<P extends Path, M extends Method> = Op<P, M> extends { responses: infer R } ? JSONOf<Ok<R>> : never;
type PathParams<O> = O extends { parameters: { path: infer PP } } ? (PP extends Record<string, unknown> ? { [K in keyof PP]: string } : never) : never;
type QueryOf<O> = O extends { parameters: { query?: infer Q } } ? Q : never;

export interface Options<P extends Path, M extends Method> {
	params?: PathParams<Op<P, M>>;
	query?: QueryOf<Op<P, M>>;
	body?: BodyOf<Op<P, M>>;
	headers?: Record<string, string>;
	signal?: AbortSignal;
}

/** An answer in the API's error format, or a failure to reach it. */
export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly code: string,
		message: string,
		readonly field?: string,
		/** The whole error body (a host's 409 lists its sandboxes). */
		readonly body?: unknown
	) {
		super(message);
	}
	/** The control plane did not answer at all. */
	get unreachable(): boolean {
		return this.status === 0;
	}
}

export const CSRF_COOKIE = 'wrenn_csrf';
export const CSRF_HEADER = 'X-CSRF-Token';
export const SESSION_MODE_HEADER = 'X-Wrenn-Session';

/** The CSRF token of the browser session, from its page-readable cookie. */
export function csrfToken(cookies: string = typeof document === 'undefined' ? '' : document.cookie): string {
	for (const part of cookies.split(';')) {
		const [name, ...rest] = part.trim().split('=');
		if (name === CSRF_COOKIE) return decodeURIComponent(rest.join('='));
	}
	return '';
}

/** Fills {name} placeholders of an OpenAPI path. */
export function fillPath(template: string, params: Record<string, string> = {}): string {
	return template.replace(/\{(\w+)\}/g, (_, k: string) => {
		const v = params[k];
		if (v === undefined) throw new Error(`missing path parameter ${k}`);
		return encodeURIComponent(v);
	});
}

/** Listeners told about every answer (the connection banner, expired sessions). */
export interface Observer {
	reached(): void;
	unreachable(): void;
	unauthorized(): void;
}
let observer: Observer | undefined;
export function observe(o: Observer | undefined): void {
	observer = o;
}

export async function toApiError(res: Response): Promise<ApiError> {
	let body: unknown;
	try {
		body = await res.json();
	} catch {
		body = undefined;
	}
	const e = (body as Schemas['Error'] | undefined)?.error;
	if (e && typeof e.code === 'string') return new ApiError(res.status, e.code, e.message, e.field, body);
	return new ApiError(res.status, 'http_' + res.status, `The control plane answered ${res.status} ${res.statusText}`.trim(), undefined, body);
}

/** Sends one request; the JSON answer, or throws ApiError. */
export async function request<P extends Path, M extends Method>(method: M, path: P, opts: Options<P, M> = {}): Promise<Answer<P, M>> {
	const res = await send(method, fillPath(path, opts.params as Record<string, string> | undefined), opts);
	if (res.status === 204) return undefined as Answer<P, M>;
	return (await res.json()) as Answer<P, M>;
}

/** Sends one request and returns the raw response (downloads), or throws ApiError. */
export async function send(method: Method, url: string, opts: { query?: unknown; body?: unknown; headers?: Record<string, string>; signal?: AbortSignal; form?: FormData } = {}): Promise<Response> {
	const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers };
	let body: BodyInit | undefined;
	if (opts.form) body = opts.form;
	else if (opts.body !== undefined) {
		headers['Content-Type'] = 'application/json';
		body = JSON.stringify(opts.body);
	}
	if (method !== 'get') {
		const t = csrfToken();
		if (t) headers[CSRF_HEADER] = t;
	}
	if (opts.query) {
		const q = new URLSearchParams();
		for (const [k, v] of Object.entries(opts.query as Record<string, unknown>)) if (v !== undefined && v !== null) q.set(k, String(v));
		if ([...q].length) url += '?' + q.toString();
	}
	let res: Response;
	try {
		res = await fetch(url, { method: method.toUpperCase(), headers, body, credentials: 'same-origin', signal: opts.signal });
	} catch (err) {
		if (err instanceof DOMException && err.name === 'AbortError') throw err;
		observer?.unreachable();
		throw new ApiError(0, 'unreachable', 'The control plane cannot be reached. Check your connection; retrying.');
	}
	if (res.status === 502 || res.status === 504) observer?.unreachable();
	else observer?.reached();
	if (res.ok) return res;
	const e = await toApiError(res);
	if (res.status === 401) observer?.unauthorized();
	throw e;
}

/** An error as a sentence for people: the API's message, with the code for support. */
export function describe(err: unknown): string {
	if (err instanceof ApiError) return err.unreachable ? err.message : `${err.message} (${err.code})`;
	if (err instanceof Error) return err.message;
	return String(err);
}

import { describe, expect, it } from 'vitest';
import { decodeOutput, ptyURL } from './pty';

describe('pty', () => {
	it('uses wss under https', () => expect(ptyURL({ protocol: 'https:', host: 'w.example' }, 'sb-1', 80, 24)).toBe('wss://w.example/v1/sandboxes/sb-1/pty?cols=80&rows=24'));
	it('uses ws under http', () => expect(ptyURL({ protocol: 'http:', host: '127.0.0.1:8000' }, 'sb-1', 100, 30)).toBe('ws://127.0.0.1:8000/v1/sandboxes/sb-1/pty?cols=100&rows=30'));
	it('passes text through', () => expect(decodeOutput('hi\r\n')).toBe('hi\r\n'));
	it('decodes base64 to bytes', () => expect(Array.from(decodeOutput('/wA=', 'base64') as Uint8Array)).toEqual([255, 0]));
});

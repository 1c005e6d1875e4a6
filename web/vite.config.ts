import { sveltekit } from '@sveltejs/kit/vite';
import { defineConfig } from 'vitest/config';

export default defineConfig({
	plugins: [sveltekit()],
	build: { reportCompressedSize: false, chunkSizeWarningLimit: 1024 },
	test: { include: ['src/**/*.test.ts'], environment: 'node' }
});

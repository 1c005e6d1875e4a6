import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

/** @type {import('@sveltejs/kit').Config} */
export default {
	preprocess: vitePreprocess(),
	kit: {
		// A single-page app: the control plane answers every page path with
		// index.html and the router takes over in the browser.
		adapter: adapter({ pages: 'build', assets: 'build', fallback: 'index.html', strict: true }),
		// No service worker, no version polling: the embedded build changes
		// only with the binary.
		version: { pollInterval: 0 }
	}
};

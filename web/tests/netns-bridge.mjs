// e2e runs the browser scripts in a network namespace of their own holding
// only loopback, so that Chromium never sees the tap and veth devices VMs add
// and remove (each change makes it cut connections in flight with
// net::ERR_NETWORK_CHANGED). e2e/browsernet_test.go passes
// WRENN_NETNS_BRIDGE (a directory of Unix sockets), WRENN_NETNS_PORTS (the
// loopback ports of the test's namespace to reach) and
// WRENN_NETNS_INBOUND_PORT (a loopback port there that reaches this
// script's server). Run by hand, without them, nothing is bridged.
import net from 'node:net';
import { join } from 'node:path';

const dir = process.env.WRENN_NETNS_BRIDGE;

/** Listens on each bridged port of this namespace's loopback, forwarding to the test's. */
export async function bridgeLoopback() {
	if (!dir) return;
	const ports = (process.env.WRENN_NETNS_PORTS ?? '').split(',').filter(Boolean);
	await Promise.all(
		ports.map(
			(port) =>
				new Promise((resolve, reject) => {
					const server = net.createServer((c) => splice(c, net.connect(join(dir, `${port}.sock`))));
					server.once('error', reject);
					server.listen(Number(port), '127.0.0.1', () => {
						server.unref();
						resolve();
					});
				})
		)
	);
}

/**
 * Starts server where the control plane reaches it and returns its origin
 * as the control plane sees it: a loopback port of this namespace when run
 * by hand, the inbound port of the test's namespace under e2e.
 */
export async function listenReachable(server) {
	if (!dir) {
		await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
		return `http://127.0.0.1:${server.address().port}`;
	}
	await new Promise((resolve) => server.listen(join(dir, 'inbound.sock'), resolve));
	return `http://127.0.0.1:${process.env.WRENN_NETNS_INBOUND_PORT}`;
}

function splice(a, b) {
	a.pipe(b);
	b.pipe(a);
	a.on('error', () => b.destroy());
	b.on('error', () => a.destroy());
	a.on('close', () => b.destroy());
	b.on('close', () => a.destroy());
}

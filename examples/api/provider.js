'use strict';
// provider.js: a fake payment provider on loopback, standing in for an external API such as
// Stripe's. It charges once per idempotency key: a second charge with a key it has seen returns
// the first charge unchanged and is counted as a provider-side dedup, not as a charge. It can be
// told to be slow or to fail for given keys, so that the API's takeover and failure paths run.
//
//   POST /charges          Idempotency-Key header, body {"amount": 1234, "currency": "eur"}
//                          201 {"id": "ch_1", "amount", "currency", "key", "charged_at"};
//                          a dedup answers 200 with the same body; an injected failure answers
//                          503 {"error": ...} and charges nothing
//   PUT  /faults/KEY       {"delay_ms": N, "delays": K, "fail": F}: the next F charges with KEY fail,
//                          then the next K are answered only after N ms (the charge is recorded on
//                          arrival: a caller that dies while it waits has still charged)
//   GET  /stats            {"charges": {KEY: n}, "dedups": {KEY: n}, "failures": {KEY: n},
//                          "received": {KEY: n}, "amounts": {KEY: amount}, "total_amount": sum}
//
// Usage: node provider.js [PORT]   (PORT 0 or none: any free port). Prints one line
// "provider listening on http://127.0.0.1:PORT" once it listens, then one JSON line per charge.
const http = require('http');

const charges = new Map();      // key -> the charge's body
const counts = { charges: {}, dedups: {}, failures: {}, received: {} };
const faults = new Map();       // key -> { delay_ms, delays, fail }
let nextId = 1;

function bump(table, key) {
	table[key] = (table[key] || 0) + 1;
}

function send(res, status, body) {
	const text = JSON.stringify(body);
	// the caller may be gone (killed, timed out): its socket's errors are no concern of ours
	res.on('error', () => {});
	if (res.destroyed || res.writableEnded)
		return;
	res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
	res.end(text);
}

function readJson(req, done) {
	let data = '';
	req.setEncoding('utf8');
	req.on('data', (chunk) => { data += chunk; });
	req.on('error', () => {});
	req.on('end', () => {
		try {
			done(null, data === '' ? {} : JSON.parse(data));
		} catch (err) {
			done(err);
		}
	});
}

function charge(req, res) {
	const key = req.headers['idempotency-key'];
	readJson(req, (err, body) => {
		if (err)
			return send(res, 400, { error: 'body is not JSON' });
		if (!key)
			return send(res, 400, { error: 'an Idempotency-Key header is required' });
		bump(counts.received, key);
		const fault = faults.get(key) || {};
		if (fault.fail > 0) {
			fault.fail--;
			bump(counts.failures, key);
			log({ event: 'failure', key });
			return send(res, 503, { error: `provider unavailable for ${key}` });
		}
		const delay = fault.delays > 0 ? fault.delay_ms : 0;
		if (fault.delays > 0)
			fault.delays--;
		let status = 200;
		let result = charges.get(key);
		if (result !== undefined) {
			bump(counts.dedups, key);
			log({ event: 'dedup', key, id: result.id });
		} else {
			// charged on arrival, answered after the delay
			result = {
				id: `ch_${nextId++}`,
				amount: body.amount,
				currency: body.currency,
				key,
				charged_at: new Date().toISOString(),
			};
			charges.set(key, result);
			bump(counts.charges, key);
			status = 201;
			log({ event: 'charge', key, id: result.id, amount: body.amount });
		}
		if (delay > 0)
			setTimeout(() => send(res, status, result), delay);
		else
			send(res, status, result);
	});
}

function log(fields) {
	process.stdout.write(JSON.stringify({ t: new Date().toISOString(), ...fields }) + '\n');
}

const server = http.createServer((req, res) => {
	const url = new URL(req.url, 'http://provider');
	if (req.method === 'POST' && url.pathname === '/charges')
		return charge(req, res);
	if (req.method === 'PUT' && url.pathname.startsWith('/faults/')) {
		const key = decodeURIComponent(url.pathname.slice('/faults/'.length));
		return readJson(req, (err, body) => {
			if (err)
				return send(res, 400, { error: 'body is not JSON' });
			const fault = {
				delay_ms: Number(body.delay_ms) || 0,
				delays: body.delays === undefined ? (body.delay_ms ? 1 : 0) : Number(body.delays),
				fail: Number(body.fail) || 0,
			};
			faults.set(key, fault);
			send(res, 200, { key, ...fault });
		});
	}
	if (req.method === 'GET' && url.pathname === '/stats') {
		const amounts = {};
		let total = 0;
		for (const [key, c] of charges) {
			amounts[key] = c.amount;
			total += c.amount;
		}
		return send(res, 200, { ...counts, amounts, total_amount: total });
	}
	send(res, 404, { error: 'not found' });
});

server.listen(Number(process.argv[2] || process.env.PROVIDER_PORT || 0), '127.0.0.1', () => {
	process.stdout.write(`provider listening on http://127.0.0.1:${server.address().port}\n`);
});

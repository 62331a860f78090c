'use strict';
// server.js: an HTTP API whose POST /payments honours an Idempotency-Key header through the
// idempotent extension's leases, calling a payment provider (provider.js) that cannot share the
// database transaction. Per request:
//
//   1. idem_begin(key, lease, request) in a transaction of its own (request: the canonical JSON of
//      the body, so a key reused with another body raises ID001 -> 422);
//   2. started: charge at the provider, passing the same key on as the provider's idempotency
//      key; then idem_complete(key, attempt, response) and the payment row in one transaction
//      -> 201. A provider error -> idem_fail(key, attempt, error, retry_after) -> 502;
//      ID003 from idem_complete or idem_fail (the lease was taken over meanwhile) -> 409, and
//      nothing is overwritten;
//   3. in_progress -> 409 with Retry-After (seconds until lease_until, at least 1);
//   4. duplicate -> the stored response: the original status code and body;
//   5. dead -> 422 with last_error: the key failed idempotent.max_attempts times and will never
//      be charged; the client must not retry it, and must use a new key for a new try.
//
// Environment: PGHOST, PGPORT, PGUSER, PGDATABASE (libpq's; PGHOST may be a socket directory),
// PROVIDER_URL (http://127.0.0.1:PORT), PORT (0 or none: any free port; on 127.0.0.1),
// LEASE_MS (the lease passed to idem_begin; none: idempotent.lease), PROVIDER_TIMEOUT_MS (10000),
// RETRY_AFTER_MS (1000: how long a failed key waits before the next attempt).
// Prints "api listening on http://127.0.0.1:PORT", then one JSON line per event.
const http = require('http');
const { Pool } = require('pg');

const PROVIDER_URL = process.env.PROVIDER_URL || 'http://127.0.0.1:4242';
const LEASE_MS = process.env.LEASE_MS ? Number(process.env.LEASE_MS) : null;
const PROVIDER_TIMEOUT_MS = Number(process.env.PROVIDER_TIMEOUT_MS || 10000);
const RETRY_AFTER_MS = Number(process.env.RETRY_AFTER_MS || 1000);
const MAX_BODY_BYTES = 64 * 1024;

// connection settings from PGHOST, PGPORT, PGUSER, PGDATABASE, as libpq reads them
const pool = new Pool({ max: 20 });
pool.on('error', (err) => log({ event: 'pool_error', error: err.message }));

function log(fields) {
	process.stdout.write(JSON.stringify({ t: new Date().toISOString(), pid: process.pid, ...fields }) + '\n');
}

// canonical JSON: object keys sorted at every level, no white space, undefined members left out
function canonical(value) {
	if (Array.isArray(value))
		return '[' + value.map(canonical).join(',') + ']';
	if (value !== null && typeof value === 'object')
		return '{' + Object.keys(value).filter((k) => value[k] !== undefined).sort()
			.map((k) => JSON.stringify(k) + ':' + canonical(value[k])).join(',') + '}';
	return JSON.stringify(value);
}

// Every answer in canonical JSON: a replay of the stored response (which went through jsonb,
// which orders keys its own way) is then the same bytes as the first answer.
function answer(res, status, body, headers = {}) {
	const text = canonical(body);
	res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
	res.end(text);
}

// seconds until a moment, rounded up, at least 1: what Retry-After says
function retryAfter(seconds) {
	return String(Math.max(1, Math.ceil(Number(seconds) || 0)));
}

// What a payment request must look like; returns an error message or null.
function invalid(body) {
	if (body === null || typeof body !== 'object' || Array.isArray(body))
		return 'the body must be a JSON object';
	if (!Number.isSafeInteger(body.amount) || body.amount <= 0)
		return 'amount must be a positive integer (in minor units)';
	if (typeof body.currency !== 'string' || !/^[a-z]{3}$/.test(body.currency))
		return 'currency must be a three-letter lower-case code';
	return null;
}

// The charge at the provider, with the payment's key as the provider's idempotency key.
// Resolves to the charge; rejects with an Error whose message says what went wrong.
async function chargeAtProvider(key, body) {
	let res;
	try {
		res = await fetch(`${PROVIDER_URL}/charges`, {
			method: 'POST',
			headers: { 'Content-Type': 'application/json', 'Idempotency-Key': key },
			body: JSON.stringify({ amount: body.amount, currency: body.currency }),
			signal: AbortSignal.timeout(PROVIDER_TIMEOUT_MS),
		});
	} catch (err) {
		throw new Error(`provider unreachable: ${err.name === 'TimeoutError' ? 'timed out' : (err.cause || err).message}`);
	}
	const text = await res.text();
	if (res.status !== 200 && res.status !== 201)
		throw new Error(`provider answered ${res.status}: ${text.slice(0, 200)}`);
	return JSON.parse(text);
}

const BEGIN_SQL = `
	SELECT status, attempt, lease_until, result, last_error,
	       extract(epoch FROM lease_until - clock_timestamp()) AS seconds_left
	FROM idem_begin($1, $2::interval, $3::jsonb)`;

// The answers to a key that exists: in progress, completed, or dead.
function answerExisting(res, key, lease) {
	switch (lease.status) {
		case 'in_progress':
			// lease_until is the end of the holder's lease, or of a failed key's wait for its retry
			return answer(res, 409, { error: 'a request with this Idempotency-Key is in progress', key },
				{ 'Retry-After': retryAfter(lease.seconds_left) });
		case 'duplicate':
			if (lease.result === null)
				return answer(res, 500, { error: 'the payment completed without a stored response', key });
			return answer(res, lease.result.status, lease.result.body);
		case 'dead':
			return answer(res, 422, {
				error: 'this payment failed for good; retry it with a new Idempotency-Key',
				key, attempts: lease.attempt, last_error: lease.last_error,
			});
		default:
			throw new Error(`unexpected idem_begin status ${lease.status}`);
	}
}

async function payments(req, res, body) {
	const key = req.headers['idempotency-key'];
	if (!key || key.length > 255)
		return answer(res, 400, { error: 'an Idempotency-Key header of 1 to 255 characters is required' });
	const bad = invalid(body);
	if (bad)
		return answer(res, 400, { error: bad });

	// 1. begin, in its own transaction (autocommit)
	let lease;
	try {
		const lease_arg = LEASE_MS === null ? null : `${LEASE_MS} milliseconds`;
		lease = (await pool.query(BEGIN_SQL, [key, lease_arg, canonical(body)])).rows[0];
	} catch (err) {
		if (err.code === 'ID001') {
			log({ event: 'reused', key });
			return answer(res, 422, { error: 'this Idempotency-Key was used with another request', key });
		}
		throw err;
	}
	log({ event: 'begin', key, status: lease.status, attempt: lease.attempt });
	if (lease.status !== 'started')
		return answerExisting(res, key, lease);

	// 2. the effect, outside any transaction
	let charge;
	try {
		charge = await chargeAtProvider(key, body);
	} catch (err) {
		log({ event: 'provider_error', key, attempt: lease.attempt, error: err.message });
		return fail(res, key, lease.attempt, err.message);
	}
	log({ event: 'charged', key, attempt: lease.attempt, charge: charge.id });

	// 3. complete, with the payment row, in one transaction
	const response = {
		status: 201,
		body: {
			payment: {
				key, amount: body.amount, currency: body.currency, charge: charge.id,
				attempt: lease.attempt, completed_at: new Date().toISOString(),
			},
		},
	};
	const client = await pool.connect();
	try {
		await client.query('BEGIN');
		await client.query('SELECT idem_complete($1, $2, $3::jsonb)', [key, lease.attempt, response]);
		await client.query(
			'INSERT INTO payments (idempotency_key, charge, amount, currency, attempt) VALUES ($1, $2, $3, $4, $5)',
			[key, charge.id, body.amount, body.currency, lease.attempt]);
		await client.query('COMMIT');
	} catch (err) {
		await client.query('ROLLBACK').catch(() => {});
		if (err.code === 'ID003') {
			log({ event: 'fenced', key, attempt: lease.attempt, in: 'idem_complete', detail: err.detail });
			return answer(res, 409, { error: 'another attempt took this request over; retry to get its answer', key },
				{ 'Retry-After': '1' });
		}
		throw err;
	} finally {
		client.release();
	}
	log({ event: 'completed', key, attempt: lease.attempt });
	answer(res, response.status, response.body);
}

// A provider error: the attempt failed; the key waits RETRY_AFTER_MS for the next attempt.
async function fail(res, key, attempt, error) {
	let lease;
	try {
		lease = (await pool.query(
			`SELECT status, attempt, lease_until, result, last_error,
			        extract(epoch FROM lease_until - clock_timestamp()) AS seconds_left
			 FROM idem_fail($1, $2, $3, $4::interval)`,
			[key, attempt, error, `${RETRY_AFTER_MS} milliseconds`])).rows[0];
	} catch (err) {
		if (err.code === 'ID003') {
			log({ event: 'fenced', key, attempt, in: 'idem_fail', detail: err.detail });
			return answer(res, 409, { error: 'another attempt took this request over; retry to get its answer', key },
				{ 'Retry-After': '1' });
		}
		throw err;
	}
	log({ event: 'failed', key, attempt, status: lease.status });
	if (lease.status === 'dead')
		return answerExisting(res, key, lease);
	answer(res, 502, { error: 'the payment provider failed; retry later', key, detail: error },
		{ 'Retry-After': retryAfter(lease.seconds_left) });
}

function readBody(req) {
	return new Promise((resolve, reject) => {
		let data = '';
		req.setEncoding('utf8');
		req.on('data', (chunk) => {
			data += chunk;
			if (data.length > MAX_BODY_BYTES)
				reject(Object.assign(new Error('body too large'), { status: 413 }));
		});
		req.on('end', () => {
			try {
				resolve(JSON.parse(data));
			} catch {
				reject(Object.assign(new Error('the body is not JSON'), { status: 400 }));
			}
		});
		req.on('error', reject);
	});
}

const server = http.createServer(async (req, res) => {
	res.on('error', () => {});   // a client that went away
	const url = new URL(req.url, 'http://api');
	if (url.pathname !== '/payments')
		return answer(res, 404, { error: 'not found' });
	if (req.method !== 'POST')
		return answer(res, 405, { error: 'use POST' }, { Allow: 'POST' });
	try {
		await payments(req, res, await readBody(req));
	} catch (err) {
		if (err.status)
			return answer(res, err.status, { error: err.message });
		log({ event: 'error', key: req.headers['idempotency-key'], error: err.message, code: err.code });
		if (!res.headersSent)
			answer(res, 500, { error: 'internal error' });
	}
});

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
	process.stdout.write(`api listening on http://127.0.0.1:${server.address().port}\n`);
});

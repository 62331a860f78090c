'use strict';
// scenario.js: the API-retry use case end to end, as test/scenarios/api.sh runs it (against a
// database prepared with schema.sql). It starts the provider and the API (lease 2 s), then:
//
//   A. clients pay with a 1 s timeout and retry with the same key and body while the provider is
//      slow for some keys (the client times out; its retry gets 409 and then the original
//      answer), slower than the lease for others (a retry takes the key over; the first attempt's
//      idem_complete is fenced with ID003), fails once for others (502, then a new attempt); and
//      the API is killed with SIGKILL while it waits for the provider, then restarted;
//   B. eight concurrent requests with one key: one is charged, the others get 409 + Retry-After;
//      a key reused with another body (completed, and in progress): 422; the same body with its
//      fields in another order: the same request; a key the provider always fails: dead -> 422;
//
// and checks: every payment charged exactly once at the provider, every provider call made by an
// attempt that held the key, every answer of a key the same body as the ledger's stored result,
// the ledger completed for every payment, one payments row per key, the sums equal.
// Prints `ok     ...` or `FAILED ...` per check and a summary; exits 1 if a check failed.
//
// Environment: libpq's PG* variables for the checks (a superuser), API_PGUSER (payments_api) for
// the API, SCENARIO_DIR (where the servers' logs go; default: a new temp dir).
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { isDeepStrictEqual } = require('util');
const { Client } = require('pg');
const { pay, tryOnce } = require('./client');

const DIR = process.env.SCENARIO_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'api-scenario-'));
const API_PGUSER = process.env.API_PGUSER || 'payments_api';
const SCOPE = API_PGUSER;   // schema.sql: the role's idempotent.scope
const LEASE_MS = 2000;
const CLIENT_TIMEOUT_MS = 1000;
const CLIENTS = 6;
const PER_CLIENT = 8;
const MAX_ATTEMPTS = 3;     // schema.sql: the role's idempotent.max_attempts

let passed = 0;
let failed = 0;
function check(ok, what, detail) {
	if (ok) {
		passed++;
		console.log(`ok     ${what}`);
	} else {
		failed++;
		console.log(`FAILED ${what}${detail === undefined ? '' : ': ' + detail}`);
	}
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1) + ' s';

async function waitFor(what, fn, ms = 10000) {
	const end = Date.now() + ms;
	for (;;) {
		const v = await fn();
		if (v)
			return v;
		if (Date.now() > end)
			throw new Error(`timed out waiting for ${what}`);
		await sleep(50);
	}
}

// --- the servers ---------------------------------------------------------------------------------
// start(NAME, SCRIPT, ENV): the server's output goes to DIR/NAME.log; resolves when it listens
async function start(name, script, env) {
	const log = path.join(DIR, `${name}.log`);
	const fd = fs.openSync(log, 'a');
	const child = spawn(process.execPath, [path.join(__dirname, script)], {
		cwd: __dirname, env: { ...process.env, ...env }, stdio: ['ignore', fd, fd],
	});
	fs.closeSync(fd);
	let exited = false;
	child.on('exit', () => { exited = true; });
	const line = await waitFor(`${name} to listen`, () => {
		if (exited)
			throw new Error(`${name} exited; see ${log}`);
		const m = fs.readFileSync(log, 'utf8').match(/listening on (http:\/\/\S+)/);
		return m && m[1];
	});
	child.exited = new Promise((resolve) => (exited ? resolve() : child.on('exit', resolve)));
	return { child, url: line, log };
}

let provider;
let api;
let apiRuns = 0;
const apiLogs = [];

function startApi(port) {
	apiRuns++;
	apiLogs.push(path.join(DIR, `api-${apiRuns}.log`));
	return start(`api-${apiRuns}`, 'server.js', {
		PGUSER: API_PGUSER, PORT: String(port), PROVIDER_URL: provider.url,
		LEASE_MS: String(LEASE_MS), RETRY_AFTER_MS: '1000', PROVIDER_TIMEOUT_MS: '10000',
	});
}

async function providerCall(method, what, body) {
	const res = await fetch(`${provider.url}${what}`, {
		method, headers: { 'Content-Type': 'application/json' },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	if (!res.ok)
		throw new Error(`provider ${method} ${what}: ${res.status}`);
	return res.json();
}
const setFault = (key, fault) => providerCall('PUT', `/faults/${encodeURIComponent(key)}`, fault);
const providerStats = () => providerCall('GET', '/stats');

// --- what the clients saw ------------------------------------------------------------------------
const payments = new Map();   // payment key -> { body, answers: [...] }
const others = [];            // answers to requests that are not payments to check (422s, ...)

function record(key, body, answers) {
	if (!payments.has(key))
		payments.set(key, { body, answers: [] });
	payments.get(key).answers.push(...answers);
}

function amountOf(c, j) {
	return 100 * (c + 1) + j;
}

// --- A: retrying clients, slow and failing provider, the API killed mid-request -------------------
async function phaseA(apiUrl) {
	for (let c = 0; c < CLIENTS; c++)
		for (let j = 0; j < PER_CLIENT; j++) {
			const key = `p-${c}-${j}`;
			if (j === 1)
				await setFault(key, { delay_ms: 1500 });       // client times out; lease holds
			else if (j === 3)
				await setFault(key, { fail: 1 });              // 502, then a new attempt
			else if (j === 5)
				await setFault(key, { delay_ms: 5000 });       // lease runs out: takeover
		}
	const clients = [];
	let pastSlow = 0;   // clients done with their payment j = 1
	for (let c = 0; c < CLIENTS; c++)
		clients.push((async () => {
			for (let j = 0; j < PER_CLIENT; j++) {
				const key = `p-${c}-${j}`;
				const body = { amount: amountOf(c, j), currency: 'eur', description: `order ${c}-${j}` };
				const r = await pay(apiUrl, key, body, { timeoutMs: CLIENT_TIMEOUT_MS });
				record(key, body, r.answers);
				if (j === 1)
					pastSlow++;
			}
		})());

	// the kill: while the API waits for the provider's answer to p-kill, once the slow payments
	// (j = 1) are done, so that they show a timeout answered without a takeover
	const killKey = 'p-kill';
	const killBody = { amount: 999, currency: 'eur', description: 'killed mid-request' };
	await waitFor('the clients to pass their slow payment', () => pastSlow === CLIENTS, 30000);
	await setFault(killKey, { delay_ms: 5000 });
	const killPay = pay(apiUrl, killKey, killBody, { timeoutMs: CLIENT_TIMEOUT_MS });
	await waitFor('the provider to receive p-kill', async () => (await providerStats()).received[killKey] >= 1);
	const killedLog = api.log;
	api.child.kill('SIGKILL');
	await api.child.exited;
	console.log(`# ${elapsed()}: API killed with SIGKILL while charging ${killKey}`);
	await sleep(300);
	api = await startApi(new URL(apiUrl).port);
	console.log(`# ${elapsed()}: API restarted`);
	record(killKey, killBody, (await killPay).answers);
	await Promise.all(clients);

	// a payment slower than the client's timeout but within the lease: timeout, 409, the answer
	const slow = [...payments.keys()].filter((k) => k.endsWith('-1')).filter((k) => {
		const st = payments.get(k).answers.map((a) => a.status || a.error);
		return st[0] === 'timeout' && st.includes(409) && st[st.length - 1] === 201;
	});
	check(slow.length > 0, 'a client timed out on a slow payment, got 409 while it ran, then its 201',
		JSON.stringify([...payments.keys()].filter((k) => k.endsWith('-1')).map((k) => payments.get(k).answers.map((a) => a.status || a.error))));

	const events = readEvents([killedLog]).filter((e) => e.key === killKey);
	check(events.some((e) => e.event === 'begin' && e.status === 'started' && e.attempt === 1) &&
		!events.some((e) => e.event === 'completed' || e.event === 'charged'),
	'the API was killed inside p-kill\'s provider call: attempt 1 begun, never completed',
	JSON.stringify(events));
}

// --- B: concurrent retries, reused keys, a dead key ----------------------------------------------
async function phaseB(apiUrl) {
	// eight concurrent requests, one key, one body
	const burstKey = 'p-burst';
	const burstBody = { amount: 777, currency: 'eur', description: 'eight at once' };
	await setFault(burstKey, { delay_ms: 1500 });
	const burst = await Promise.all(Array.from({ length: 8 }, () => tryOnce(apiUrl, burstKey, burstBody, 10000)));
	record(burstKey, burstBody, burst);
	const created = burst.filter((a) => a.status === 201);
	const busy = burst.filter((a) => a.status === 409);
	check(created.length === 1 && busy.length === 7,
		'8 concurrent requests with one key: one 201, seven 409', JSON.stringify(burst.map((a) => a.status || a.error)));
	check(busy.length > 0 && busy.every((a) => /^[12]$/.test(a.retryAfter || '')),
		'each 409 of the burst has Retry-After 1 or 2 (seconds left of the 2 s lease)',
		JSON.stringify(busy.map((a) => a.retryAfter)));
	// the seven retry as Retry-After says, and get the one answer
	const retries = await Promise.all(busy.map(async (a) => {
		await sleep(Number(a.retryAfter) * 1000);
		return pay(apiUrl, burstKey, burstBody, { timeoutMs: 5000 });
	}));
	for (const r of retries)
		record(burstKey, burstBody, r.answers);
	check(created.length === 1 && retries.every((r) => r.final.status === 201 && isDeepStrictEqual(r.final.body, created[0].body)),
		'the seven, retrying after Retry-After, get the 201 and body of the one that was charged');

	// a reused key with another body, once completed
	const reused = await tryOnce(apiUrl, burstKey, { ...burstBody, amount: 778 }, 5000);
	others.push(reused);
	check(reused.status === 422, 'a completed key reused with another body: 422', JSON.stringify(reused));

	// ... and while in progress; the same body with its fields in another order is the same request
	const reuseKey = 'p-reuse';
	const reuseBody = { amount: 555, currency: 'eur', description: 'reused while in progress' };
	await setFault(reuseKey, { delay_ms: 1500 });
	const first = tryOnce(apiUrl, reuseKey, reuseBody, 10000);
	await sleep(300);
	const other = await tryOnce(apiUrl, reuseKey, { ...reuseBody, currency: 'usd' }, 5000);
	others.push(other);
	check(other.status === 422, 'a key in progress reused with another body: 422', JSON.stringify(other));
	record(reuseKey, reuseBody, [await first]);
	const reordered = { description: reuseBody.description, currency: reuseBody.currency, amount: reuseBody.amount };
	const again = await tryOnce(apiUrl, reuseKey, reordered, 5000);
	record(reuseKey, reuseBody, [again]);
	check(again.status === 201, 'the same body with its fields in another order: the original 201', JSON.stringify(again));

	// a payment the provider always fails: dead after MAX_ATTEMPTS attempts
	const poisonKey = 'p-poison';
	const poisonBody = { amount: 13, currency: 'eur', description: 'always fails' };
	await setFault(poisonKey, { fail: 1000 });
	const poison = await pay(apiUrl, poisonKey, poisonBody, { timeoutMs: 5000 });
	const poisonAgain = await tryOnce(apiUrl, poisonKey, poisonBody, 5000);
	others.push(...poison.answers, poisonAgain);
	const bad = poison.answers.filter((a) => a.status === 502).length;
	check(bad === MAX_ATTEMPTS - 1 && poison.final.status === 422 && /provider answered 503/.test(poison.final.body.last_error),
		`a payment failing at the provider: 502 for ${MAX_ATTEMPTS - 1} attempts, then dead -> 422 with last_error`,
		JSON.stringify(poison.answers.map((a) => a.status || a.error)) + ' ' + JSON.stringify(poison.final.body));
	check(poisonAgain.status === 422 && isDeepStrictEqual(poisonAgain.body, poison.final.body),
		'the dead key answers 422 again, and calls the provider no more', JSON.stringify(poisonAgain));
	return { poisonKey };
}

// --- the checks ----------------------------------------------------------------------------------
function readEvents(files) {
	const events = [];
	for (const f of files)
		for (const line of fs.readFileSync(f, 'utf8').split('\n')) {
			if (!line.startsWith('{'))
				continue;
			try {
				events.push(JSON.parse(line));
			} catch {
				// the last line of a killed process may be cut short
			}
		}
	return events;
}

function list(keys) {
	return keys.length > 8 ? keys.slice(0, 8).join(', ') + `, ... (${keys.length})` : keys.join(', ');
}

async function checks(apiUrl, poisonKey) {
	const stats = await providerStats();
	const keys = [...payments.keys()].sort();
	const db = new Client();
	await db.connect();
	await db.query('SELECT set_config($1, $2, false)', ['idempotent.scope', SCOPE]);
	const ledger = new Map((await db.query(
		'SELECT g.key, g.state, g.attempts, g.result, g.last_error FROM unnest($1::text[]) k(key), LATERAL idem_get(k.key) g',
		[[...keys, poisonKey]])).rows.map((r) => [r.key, r]));
	const rows = (await db.query(
		'SELECT idempotency_key AS key, charge, amount::int, attempt FROM payments ORDER BY idempotency_key')).rows;
	await db.query('SELECT set_config($1, $2, false)', ['idempotent.scope', '']);
	const shared = (await db.query('SELECT count(*)::int AS n FROM unnest($1::text[]) k(key), LATERAL idem_get(k.key) g',
		[keys])).rows[0].n;
	await db.end();

	// one more retry of each payment, now that everything has settled
	const final = new Map();
	await Promise.all(keys.map(async (key) => {
		const a = await tryOnce(apiUrl, key, payments.get(key).body, 5000);
		final.set(key, a);
		payments.get(key).answers.push(a);
	}));

	const where = (pred) => keys.filter((k) => !pred(k));
	let bad = where((k) => stats.charges[k] === 1);
	check(bad.length === 0, `every payment charged exactly once at the provider (${keys.length} keys)`,
		list(bad.map((k) => `${k}: ${stats.charges[k] || 0}`)));
	bad = where((k) => ledger.has(k) && ledger.get(k).state === 'completed');
	check(bad.length === 0, 'the ledger holds every payment key completed, in the API\'s scope',
		list(bad.map((k) => `${k}: ${ledger.has(k) ? ledger.get(k).state : 'absent'}`)));
	check(shared === 0, 'no payment key in the shared scope', `${shared} found`);
	bad = where((k) => (stats.received[k] || 0) <= (ledger.has(k) ? ledger.get(k).attempts : 0));
	check(bad.length === 0, 'provider calls per key <= attempts begun: only a lease holder called the provider',
		list(bad.map((k) => `${k}: ${stats.received[k]} calls, ${ledger.has(k) && ledger.get(k).attempts} attempts`)));
	bad = where((k) => {
		const ok = payments.get(k).answers.filter((a) => a.status >= 200 && a.status < 300);
		return ledger.has(k) && ledger.get(k).result && ledger.get(k).result.status === 201 && ok.length > 0 &&
			ok.every((a) => a.status === 201 && a.text === ok[0].text && isDeepStrictEqual(a.body, ledger.get(k).result.body));
	});
	check(bad.length === 0, 'every 2xx answer of a key, first or retried, is the original response: 201, the stored body, the same bytes',
		list(bad));
	bad = where((k) => final.get(k).status === 201);
	check(bad.length === 0, 'a retry of every payment after the run answers 201', list(bad.map((k) => `${k}: ${final.get(k).status || final.get(k).error}`)));
	bad = where((k) => {
		const p = final.get(k).body && final.get(k).body.payment;
		return p && p.charge === (ledger.get(k).result.body.payment.charge) && p.amount === payments.get(k).body.amount &&
			stats.amounts[k] === p.amount && p.attempt === ledger.get(k).attempts;
	});
	check(bad.length === 0, 'each answer names the provider\'s charge, the amount asked, and the attempt that completed', list(bad));
	const byKey = new Map();
	for (const r of rows)
		byKey.set(r.key, [...(byKey.get(r.key) || []), r]);
	bad = where((k) => (byKey.get(k) || []).length === 1 && byKey.get(k)[0].amount === payments.get(k).body.amount);
	check(bad.length === 0 && rows.length === keys.length, 'one payments row per key, with its amount',
		`${rows.length} rows for ${keys.length} keys; ${list(bad)}`);
	const asked = keys.reduce((s, k) => s + payments.get(k).body.amount, 0);
	const inRows = rows.reduce((s, r) => s + r.amount, 0);
	const inLedger = keys.reduce((s, k) => s + ((ledger.get(k) || {}).result || { body: { payment: { amount: 0 } } }).body.payment.amount, 0);
	check(asked === stats.total_amount && asked === inRows && asked === inLedger,
		'sums match: asked = charged at the provider = payments rows = ledger results',
		`asked ${asked}, charged ${stats.total_amount}, rows ${inRows}, ledger ${inLedger}`);

	const poison = ledger.get(poisonKey);
	check(poison && poison.state === 'dead' && poison.attempts === MAX_ATTEMPTS && !stats.charges[poisonKey] &&
		stats.received[poisonKey] === MAX_ATTEMPTS && !byKey.has(poisonKey),
	`the poison key is dead after ${MAX_ATTEMPTS} attempts, never charged, no payments row`,
	JSON.stringify({ poison, charges: stats.charges[poisonKey], calls: stats.received[poisonKey] }));

	// every answer that was not a 2xx
	const all = [...[...payments.values()].flatMap((p) => p.answers), ...others];
	const conflicts = all.filter((a) => a.status === 409);
	check(conflicts.length > 0 && conflicts.every((a) => Number(a.retryAfter) >= 1),
		`every 409 carries Retry-After >= 1 s (${conflicts.length} 409s)`,
		JSON.stringify(conflicts.filter((a) => !(Number(a.retryAfter) >= 1))));
	const unexpected = all.filter((a) => a.status !== undefined && ![201, 409, 422, 502].includes(a.status));
	check(unexpected.length === 0, 'no answer other than 201, 409, 422 or 502 (no 500)', JSON.stringify(unexpected.slice(0, 3)));

	// what was exercised
	const events = readEvents(apiLogs);
	// a new attempt after the previous one failed (idem_fail) is a retry; any other, a takeover
	const failedAttempts = new Set(events.filter((e) => e.event === 'failed').map((e) => `${e.key}/${e.attempt}`));
	const laterAttempts = events.filter((e) => e.event === 'begin' && e.status === 'started' && e.attempt > 1);
	const takeovers = laterAttempts.filter((e) => !failedAttempts.has(`${e.key}/${e.attempt - 1}`));
	const retriesAfterFailure = laterAttempts.length - takeovers.length;
	const fenced = events.filter((e) => e.event === 'fenced');
	const providerErrors = events.filter((e) => e.event === 'provider_error');
	const lost = takeovers.filter((e) => {
		const r = ledger.get(e.key);
		return !(r && r.state === 'completed' && r.attempts >= e.attempt && r.result.body.payment.attempt === r.attempts);
	});
	check(takeovers.length > 0 && lost.length === 0,
		'leases that ran out were taken over, and the key completed by its last attempt',
		`${takeovers.length} takeovers; ${JSON.stringify(lost.slice(0, 3))}`);
	check(fenced.length > 0 && fenced.every((e) => ledger.has(e.key) && ledger.get(e.key).attempts > e.attempt),
		'a slow attempt whose lease was taken over got ID003 from idem_complete and changed nothing',
		JSON.stringify(fenced.slice(0, 3)));
	const dedups = Object.values(stats.dedups).reduce((s, n) => s + n, 0);
	check((stats.dedups['p-kill'] || 0) >= 1, 'after the kill, the takeover called the provider again with the key: a provider-side dedup',
		JSON.stringify(stats.dedups));

	const count = (st) => all.filter((a) => a.status === st).length;
	const tries = all.length;
	console.log(`# ${keys.length} payments, ${tries} requests (${count(201)} x 201, ${count(409)} x 409, ` +
		`${count(422)} x 422, ${count(502)} x 502, ${all.filter((a) => a.error === 'timeout').length} client timeouts, ` +
		`${all.filter((a) => a.error !== undefined && a.error !== 'timeout').length} connection errors)`);
	console.log(`# provider: ${Object.values(stats.received).reduce((s, n) => s + n, 0)} calls, ` +
		`${Object.values(stats.charges).reduce((s, n) => s + n, 0)} charges, ${dedups} dedups, ` +
		`${Object.values(stats.failures).reduce((s, n) => s + n, 0)} injected failures`);
	console.log(`# API: ${apiRuns - 1} kill(s) with SIGKILL, ${takeovers.length} takeovers of leases that ran out, ` +
		`${fenced.length} fenced (ID003), ${providerErrors.length} provider errors -> idem_fail, ` +
		`${retriesAfterFailure} new attempts after a failure, ${events.filter((e) => e.event === 'reused').length} reused keys (ID001) -> 422`);
}

async function main() {
	provider = await start('provider', 'provider.js', { PROVIDER_PORT: '0' });
	api = await startApi(0);
	const apiUrl = api.url;
	console.log(`# ${elapsed()}: provider ${provider.url}, API ${apiUrl}, logs in ${DIR}`);
	await phaseA(apiUrl);
	console.log(`# ${elapsed()}: phase A done (${CLIENTS} clients x ${PER_CLIENT} payments, 1 kill)`);
	const { poisonKey } = await phaseB(apiUrl);
	console.log(`# ${elapsed()}: phase B done`);
	await checks(apiUrl, poisonKey);
	console.log(`# ${elapsed()}: done`);
}

main()
	.catch((err) => {
		failed++;
		console.log(`FAILED the scenario stopped: ${err.stack || err}`);
	})
	.finally(() => {
		for (const s of [api, provider])
			if (s)
				s.child.kill('SIGTERM');
		console.log(`# scenario.js: ${passed} passed, ${failed} failed`);
		process.exitCode = failed === 0 ? 0 : 1;
	});

'use strict';
// client.js: a client of POST /payments that retries as a careful client does: the same key and
// the same body every time; after a timeout or a lost connection at once (after a short pause),
// after 409 or 502 when Retry-After says; it stops at any other answer (201, 400, 422).
//
// As a program:  node client.js API_URL KEY '{"amount": 1234, "currency": "eur"}'
// prints each answer and exits 0 on 2xx. As a module: pay(apiUrl, key, body, options) resolves to
// { final, answers }: the last answer and every one before it, each { status, retryAfter, body,
// text } (text: the body as received) or { error } for a try that got no answer.
const RETRY_STATUSES = new Set([409, 500, 502, 503]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One try: resolves to { status, retryAfter, body, text } or { error }.
async function tryOnce(apiUrl, key, body, timeoutMs) {
	try {
		const res = await fetch(`${apiUrl}/payments`, {
			method: 'POST',
			headers: { 'Content-Type': 'application/json', 'Idempotency-Key': key },
			body: JSON.stringify(body),
			signal: AbortSignal.timeout(timeoutMs),
		});
		const text = await res.text();
		let parsed;
		try {
			parsed = JSON.parse(text);
		} catch {
			parsed = text;
		}
		return { status: res.status, retryAfter: res.headers.get('retry-after'), body: parsed, text };
	} catch (err) {
		return { error: err.name === 'TimeoutError' ? 'timeout' : (err.cause || err).code || err.message };
	}
}

// pay: try until an answer that is not worth retrying, or until deadlineMs has passed.
async function pay(apiUrl, key, body, { timeoutMs = 1000, deadlineMs = 60000, pauseMs = 200, onAnswer } = {}) {
	const answers = [];
	const deadline = Date.now() + deadlineMs;
	for (;;) {
		const a = await tryOnce(apiUrl, key, body, timeoutMs);
		a.at = Date.now();
		answers.push(a);
		if (onAnswer)
			onAnswer(a);
		const retry = a.error !== undefined || RETRY_STATUSES.has(a.status);
		if (!retry || Date.now() > deadline)
			return { final: a, answers };
		const seconds = Number(a.retryAfter);
		await sleep(a.retryAfter !== null && a.retryAfter !== undefined && seconds > 0 ? seconds * 1000 : pauseMs);
	}
}

module.exports = { pay, tryOnce };

if (require.main === module) {
	const [apiUrl, key, json] = process.argv.slice(2);
	if (!apiUrl || !key || !json) {
		console.error("usage: node client.js API_URL KEY '{\"amount\": 1234, \"currency\": \"eur\"}'");
		process.exit(2);
	}
	pay(apiUrl, key, JSON.parse(json), {
		timeoutMs: 5000,
		onAnswer: (a) => console.log(JSON.stringify(a)),
	}).then(({ final }) => process.exit(final.status >= 200 && final.status < 300 ? 0 : 1));
}

'use strict';
// test/drivers/node/driver_test.js: node-postgres (npm `pg`) calling the idempotent extension with
// bound parameters, as an application would. Run by test/scenarios/drivers.sh against the database
// that test/drivers/setup.sql made; connects with the PG* environment variables. Prints one line
// per assertion, `ok     node: ...` or `FAILED node: ...`, and exits 1 if any failed.
const pg = require('pg');

const DRIVER = 'node';
const ACCOUNT = 300; // accounts 301..303 belong to this driver

// The statements the messages run.
const PAY = 'INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount';
const SET_BALANCE = 'INSERT INTO accounts (id, balance) VALUES ($1, $2) ' +
  'ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance';
const ADD_TO_BALANCE = 'INSERT INTO accounts (id, balance) VALUES ($1, $2) ' +
  'ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance';
const TOTALS = 'SELECT $1 AS amount, $2 AS total';
// A batch's consumer (README, "Batches"): one set-based statement for the messages not seen before.
const CONSUME_BATCH = 'WITH fresh AS (SELECT ord FROM idem_claim_batch($1::text[]) WHERE applied) ' +
  'INSERT INTO payments (id, account, amount) SELECT m.id, m.account, m.amount ' +
  'FROM unnest($1::text[], $2::int[], $3::numeric[]) WITH ORDINALITY AS m(id, account, amount, ord) ' +
  'JOIN fresh USING (ord)';

// jsonb comes back with its numbers as strings, so that 975.00 stays "975.00".
function parseJsonbKeepNumbers(text) {
  return JSON.parse(text.replace(/("(?:[^"\\]|\\.)*")|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g,
    (number, string) => string ?? `"${number}"`));
}
pg.types.setTypeParser(pg.types.builtins.JSONB, parseJsonbKeepNumbers);

let failures = 0;
function check(name, ok, got) {
  if (ok) {
    console.log(`ok     ${DRIVER}: ${name}`);
  } else {
    failures++;
    console.log(`FAILED ${DRIVER}: ${name}: got ${JSON.stringify(got)}`);
  }
}
// check that fn() fails with SQLSTATE code
async function checkError(name, code, fn) {
  try {
    const got = await fn();
    check(name, false, got);
  } catch (err) {
    check(name, err.code === code, `${err.code} ${err.message}`);
  }
}
// the outcome, or the error as {status: 'error ID001', ...}
const outcome = (call) => call.catch((err) => ({ status: `error ${err.code}`, message: err.message }));
const is = (out, status, applied) => out.status === status && out.applied === applied;
const pid = (name) => `${DRIVER}:${name}`; // payment ids of this driver
const key = (name) => `payment:${pid(name)}`;

// node-postgres sends every parameter untyped: each extra argument of idem_apply needs its cast.
async function pay(db, id, account, amount) {
  const { rows: [out] } = await db.query(
    'SELECT * FROM idem_apply($1, NULL, $2, $3::text, $4::int, $5::numeric)',
    [`payment:${id}`, PAY, id, account, amount]);
  return out;
}

async function once(db) {
  const first = await pay(db, pid('p-1'), ACCOUNT, '975.00');
  check('once: applied', is(first, 'applied', true) && first.rows === '1' &&
    first.version === null && first.result[0].amount === '975.00', first);
  const again = await pay(db, pid('p-1'), ACCOUNT, '975.00');
  check('once: redelivery is a duplicate with the stored result', is(again, 'duplicate', false) &&
    again.rows === '1' && JSON.stringify(again.result) === JSON.stringify(first.result), again);
  const { rows: [n] } = await db.query('SELECT count(*)::int AS n FROM payments WHERE id = $1', [pid('p-1')]);
  check('once: the payment exists once', n.n === 1, n);
}

async function newer(db) {
  const state = (version, balance) => db.query(
    'SELECT * FROM idem_apply($1, $2, $3, $4::int, $5::numeric)',
    [`account:${DRIVER}:1`, version, SET_BALANCE, ACCOUNT + 1, balance]).then((r) => r.rows[0]);
  const v2 = await state(2, '20.00');
  check('newer: version 2 applied', is(v2, 'applied', true) && v2.version === '2', v2);
  const again = await state(2, '20.00');
  check('newer: version 2 again is a duplicate', is(again, 'duplicate', false), again);
  const v1 = await state(1, '10.00');
  check('newer: version 1 is stale', is(v1, 'stale', false) && v1.version === '2', v1);
  const v3 = await state(3, '30.00');
  check('newer: version 3 applied over 2', is(v3, 'applied', true) && v3.version === '3' &&
    v3.previous_version === '2', v3);
}

async function next(db) {
  const delta = (version, amount) => db.query(
    'SELECT * FROM idem_apply_next($1, $2, $3, $4::int, $5::numeric)',
    [`account:${DRIVER}:2`, version, ADD_TO_BALANCE, ACCOUNT + 2, amount]).then((r) => r.rows[0]);
  const early = await delta(2, '5.00');
  check('next: version 2 of a new key is a gap', is(early, 'gap', false) && early.version === null, early);
  const v1 = await delta(1, '10.00');
  check('next: version 1 applied', is(v1, 'applied', true) && v1.version === '1', v1);
  const v2 = await delta(2, '5.00');
  check('next: version 2 applied', is(v2, 'applied', true) && v2.previous_version === '1', v2);
  const skip = await delta(4, '7.00');
  check('next: version 4 after 2 is a gap', is(skip, 'gap', false) && skip.version === '2', skip);
  const { rows: [a] } = await db.query('SELECT balance::text FROM accounts WHERE id = $1', [ACCOUNT + 2]);
  check('next: balance is versions 1 and 2 added once each', a.balance === '15.00', a);
}

async function upsert(db) {
  const state = (version, balance) => db.query(
    'SELECT * FROM idem_upsert($1, $2, $3, $4::int, $5::numeric)',
    [`account:${DRIVER}:3`, version, SET_BALANCE, ACCOUNT + 3, balance]).then((r) => r.rows[0]);
  const v1 = await state(1, '1.00');
  check('upsert: version 1 applied', is(v1, 'applied', true), v1);
  const again = await state(1, '1.50');
  check('upsert: version 1 again applied', is(again, 'applied', true) && again.previous_version === '1', again);
  const v0 = await state(0, '0.00');
  check('upsert: version 0 is stale', is(v0, 'stale', false), v0);
}

async function claim(db) {
  // the consumer's own statements, in the same transaction as the claim
  const consume = async (name, commit) => {
    await db.query('BEGIN');
    const { rows: [out] } = await db.query('SELECT * FROM idem_claim($1)', [key(name)]);
    if (out.applied) {
      await db.query('INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3)',
        [pid(name), ACCOUNT, '12.50']);
    }
    await db.query(commit ? 'COMMIT' : 'ROLLBACK');
    return out;
  };
  const first = await consume('p-2', true);
  check('claim: applied in the caller\'s transaction', is(first, 'applied', true), first);
  const again = await consume('p-2', true);
  check('claim: duplicate after the commit', is(again, 'duplicate', false), again);
  const rolledBack = await consume('p-3', false);
  const retried = await consume('p-3', true);
  check('claim: a rolled back claim records nothing', is(rolledBack, 'applied', true) &&
    is(retried, 'applied', true), { rolledBack, retried });
}

async function untyped(db) {
  const args = [key('p-4'), PAY, pid('p-4'), ACCOUNT, '1.00'];
  await checkError('"any": an untyped argument is 42P18', '42P18', () => db.query(
    'SELECT * FROM idem_apply($1, NULL, $2, $3, $4, $5)', args));
  const { rows: [out] } = await db.query(
    'SELECT * FROM idem_apply($1, NULL, $2, $3::text, $4::int, $5::numeric)', args);
  check('"any": with casts it applies', is(out, 'applied', true), out);
}

async function results(db) {
  const totals = () => db.query('SELECT * FROM idem_apply($1, NULL, $2, $3::numeric, $4::numeric)',
    [`totals:${DRIVER}`, TOTALS, '975.00', '12345678901234567.89']).then((r) => r.rows[0]);
  const exact = (out) => out.result[0].amount === '975.00' && out.result[0].total === '12345678901234567.89';
  const first = await totals();
  check('result: numbers exact when applied', is(first, 'applied', true) && exact(first), first);
  const again = await totals();
  check('result: numbers exact in the replay', is(again, 'duplicate', false) && exact(again), again);
}

async function errors(db) {
  await pay(db, pid('p-5'), ACCOUNT, '5.00');
  await checkError('ID001: same key, another amount', 'ID001', () => pay(db, pid('p-5'), ACCOUNT, '6.00'));
  await checkError('ID002: same key, another policy', 'ID002', () => db.query(
    'SELECT * FROM idem_apply_next($1, 1, $2, $3::text, $4::int, $5::numeric)',
    [key('p-5'), PAY, pid('p-5'), ACCOUNT, '5.00']));
}

// Payment x:p-1 was applied before this driver ran (test/drivers/setup.sql), as 'x:p-1'::text,
// 42 (int4), 25.00 (numeric).
async function redelivery(db) {
  const out = await outcome(pay(db, 'x:p-1', 42, '25.00'));
  check('redelivery of x:p-1 is a duplicate with its result', is(out, 'duplicate', false) &&
    out.rows === '1' && out.result[0].amount === '25.00', out);
  // a message body parsed with JSON.parse: {"amount": 25.00} gives the number 25
  const parsed = JSON.parse('{"amount": 25.00}');
  const out25 = await outcome(pay(db, 'x:p-1', 42, parsed.amount));
  check('redelivery of x:p-1 with amount 25 from JSON.parse is a duplicate', is(out25, 'duplicate', false) &&
    out25.result[0].amount === '25.00', out25);
}

// node-postgres sends a JS array as an array literal, untyped: each one needs its cast. Amounts are
// strings, as a JS number would round 12345678901234567.89.
async function consumeBatch(db, ids, accounts, amounts) {
  await db.query('BEGIN');
  const { rowCount } = await db.query(CONSUME_BATCH, [ids, accounts, amounts]);
  await db.query('COMMIT');
  return rowCount;
}

async function batch(db) {
  const row = (ord, k, status, applied) => ({ ord, key: k, status, applied });
  const same = (got, want) => JSON.stringify(got) === JSON.stringify(want);
  const keys = [`batch:${DRIVER}:1`, `batch:${DRIVER}:2`, `batch:${DRIVER}:1`];
  const { rows: claimed } = await db.query(
    'SELECT ord, key, status, applied FROM idem_claim_batch($1::text[])', [keys]);
  check('batch: one row per element in input order, a repeated key a duplicate', same(claimed, [
    row(1, keys[0], 'applied', true), row(2, keys[1], 'applied', true), row(3, keys[0], 'duplicate', false)]),
  claimed);
  const account = [`batch:${DRIVER}:a`, `batch:${DRIVER}:a`, `batch:${DRIVER}:a`, `batch:${DRIVER}:b`];
  const { rows: versioned } = await db.query(
    'SELECT ord, key, status, applied FROM idem_claim_batch($1::text[], $2::bigint[])', [account, [3, 5, 4, 1]]);
  check('batch: versions 3, 5, 4 of a key are applied, applied, stale', same(versioned, [
    row(1, account[0], 'applied', true), row(2, account[0], 'applied', true),
    row(3, account[0], 'stale', false), row(4, account[3], 'applied', true)]), versioned);

  const ids = [pid('b-1'), pid('b-2'), pid('b-1'), pid('b-3')];
  const amounts = ['975.00', '0.10', '975.00', '12345678901234567.89'];
  const first = await consumeBatch(db, ids, ids.map(() => ACCOUNT), amounts);
  check('batch: the set-based statement inserts each message of the batch once', first === 3, first);
  const again = await consumeBatch(db, ids, ids.map(() => ACCOUNT), amounts);
  check('batch: the batch redelivered inserts nothing', again === 0, again);
  const { rows: paid } = await db.query(
    'SELECT id, amount FROM payments WHERE id = ANY($1::text[]) ORDER BY id', [ids]);
  check('batch: amounts exact through numeric[]', same(paid, [{ id: pid('b-1'), amount: '975.00' },
    { id: pid('b-2'), amount: '0.10' }, { id: pid('b-3'), amount: '12345678901234567.89' }]), paid);
}

// A lease's request may be a JS object (node-postgres sends JSON.stringify's text); a result whose
// numbers must stay exact goes as JSON text, as JSON.stringify would write 975.00 as 975.
async function begin(db, k, request) {
  const { rows: [out] } = await db.query('SELECT * FROM idem_begin($1, $2::interval, $3::jsonb)',
    [k, '1 hour', request]);
  return out;
}

async function lease(db) {
  const mail = `receipt:${DRIVER}:1`;
  const request = { to: 'ann@example.com', payment: pid('p-1') };
  const first = await begin(db, mail, request);
  check('lease: started, attempt 1', first.status === 'started' && first.attempt === 1 &&
    first.lease_until > new Date(), first);
  const held = await begin(db, mail, request);
  check('lease: a second begin is in_progress', held.status === 'in_progress' && held.attempt === 1, held);
  await db.query('SELECT idem_complete($1, $2, $3::jsonb)',
    [mail, first.attempt, '{"amount": 975.00, "total": 12345678901234567.89}']);
  const later = await begin(db, mail, request);
  check('lease: after idem_complete a duplicate with the result exact', later.status === 'duplicate' &&
    later.result.amount === '975.00' && later.result.total === '12345678901234567.89', later);
  await checkError('lease: ID001: same key, another request', 'ID001',
    () => begin(db, mail, { to: 'bob@example.com', payment: pid('p-1') }));
  await checkError('lease: ID003: idem_complete of an attempt that no longer holds the key', 'ID003',
    () => db.query('SELECT idem_complete($1, $2, $3::jsonb)', [mail, first.attempt, '{}']));

  // a poison message: its transaction failed, its failure is recorded in a transaction of its own
  const failed = await outcome(pay(db, pid('p-6'), ACCOUNT, '1e30'));
  check('idem_fail: the payment fails (22003)', failed.status === 'error 22003', failed);
  const { rows: [counted] } = await db.query('SELECT * FROM idem_fail($1, NULL, $2)',
    [key('p-6'), failed.message]);
  check('idem_fail: an ordinary key\'s failure is counted', counted.status === 'failed' &&
    counted.attempt === 1, counted);
  const { rows: [got] } = await db.query('SELECT state, attempts, last_error FROM idem_get($1)', [key('p-6')]);
  check('idem_fail: idem_get shows 1 attempt', got.state === 'failed' && got.attempts === 1 &&
    got.last_error === failed.message, got);
}

const SECTIONS = [once, newer, next, upsert, claim, untyped, results, errors, redelivery, batch, lease];

async function main() {
  const db = new pg.Client(); // PGHOST, PGPORT, PGUSER, PGDATABASE
  await db.connect();
  for (const section of SECTIONS) {
    try {
      await section(db);
    } catch (err) {
      check(`${section.name}: no unexpected error`, false, `${err.code} ${err.message}`);
      await db.query('ROLLBACK').catch(() => {});
    }
  }
  await db.end();
  process.exitCode = failures ? 1 : 0;
}

main().catch((err) => {
  console.log(`FAILED ${DRIVER}: ${err.stack}`);
  process.exitCode = 2;
});

-- demo/report.sql: compare both consumers' results with the exactly-once expectation.
--
-- psql variables: consumers, seed, exact_secs, naive_secs (wall time of each consumer run).
-- Prints a plain-text report; its last line is RESULT: PASS or RESULT: FAIL.

\set ON_ERROR_STOP on
\pset tuples_only on
\pset format unaligned

-- what an exactly-once consumer must end with, from the distinct messages
CREATE TEMP VIEW expected_balance AS
SELECT o.account_id, o.balance - coalesce(sum(m.amount), 0) AS balance
FROM stream.opening o
LEFT JOIN stream.messages m ON m.account_id = o.account_id AND m.kind = 'payment'
GROUP BY o.account_id, o.balance;

CREATE TEMP VIEW newest_terms AS
SELECT DISTINCT ON (account_id) account_id, version, credit_limit, status
FROM stream.messages WHERE kind = 'terms'
ORDER BY account_id, version DESC;

CREATE TEMP VIEW payments AS
SELECT key, amount FROM stream.messages WHERE kind = 'payment';

CREATE TEMP TABLE n AS SELECT
  (SELECT count(*) FROM stream.messages) AS messages,
  (SELECT count(*) FROM payments) AS payments,
  (SELECT count(*) FROM stream.messages WHERE kind = 'terms') AS terms,
  (SELECT count(*) FROM stream.opening) AS accounts,
  (SELECT count(*) FROM stream.deliveries) AS delivered,
  (SELECT count(*) FROM stream.deliveries WHERE cause = 'first') AS firsts,
  (SELECT count(*) FROM stream.deliveries WHERE cause = 'producer retry') AS retries,
  (SELECT count(*) FROM stream.deliveries WHERE cause = 'broker redelivery') AS redeliveries,
  (SELECT count(*) FROM stream.deliveries WHERE cause = 'rebalance') AS rebalanced,
  (SELECT count(*) FROM exact.outcomes) AS consumed,
  (SELECT count(*) FROM exact.outcomes WHERE status = 'applied') AS applied,
  (SELECT count(*) FROM exact.outcomes WHERE status = 'duplicate') AS duplicates,
  (SELECT count(*) FROM exact.outcomes WHERE status = 'stale') AS stale,
  (SELECT count(*) FROM exact.outcomes
    WHERE status NOT IN ('applied', 'duplicate', 'stale')) AS other,
  -- deliveries whose idem_apply overlapped another consumer's call that applied the same key
  (SELECT count(DISTINCT d.delivery_no) FROM exact.outcomes d
     JOIN exact.outcomes a ON a.key = d.key AND a.status = 'applied'
    WHERE d.status <> 'applied' AND a.consumer <> d.consumer
      AND d.started < a.finished AND a.started < d.finished) AS raced,
  (SELECT count(*) FROM exact.charges) - (SELECT count(*) FROM payments) AS exact_double,
  (SELECT coalesce(sum(amount), 0) FROM exact.charges)
    - (SELECT sum(amount) FROM payments) AS exact_twice,
  (SELECT count(*) FROM naive.charges) - (SELECT count(*) FROM payments) AS naive_double,
  (SELECT coalesce(sum(amount), 0) FROM naive.charges)
    - (SELECT sum(amount) FROM payments) AS naive_twice,
  (SELECT count(*) FROM exact.accounts a JOIN expected_balance e ON e.account_id = a.id
    WHERE a.balance <> e.balance) AS exact_bad_balance,
  (SELECT count(*) FROM naive.accounts a JOIN expected_balance e ON e.account_id = a.id
    WHERE a.balance <> e.balance) AS naive_bad_balance,
  (SELECT count(*) FROM exact.accounts a JOIN newest_terms t ON t.account_id = a.id
    WHERE (a.terms_version, a.credit_limit, a.status)
          IS DISTINCT FROM (t.version, t.credit_limit, t.status)) AS exact_old_terms,
  (SELECT count(*) FROM naive.accounts a JOIN newest_terms t ON t.account_id = a.id
    WHERE (a.terms_version, a.credit_limit, a.status)
          IS DISTINCT FROM (t.version, t.credit_limit, t.status)) AS naive_old_terms,
  -- per key: each payment charged exactly once, and applied exactly once in the outcome log
  (SELECT count(*) FROM payments p
     LEFT JOIN (SELECT payment_key, count(*) AS c FROM exact.charges GROUP BY 1) c
            ON c.payment_key = p.key
     LEFT JOIN (SELECT key, count(*) AS c FROM exact.outcomes WHERE status = 'applied' GROUP BY 1) o
            ON o.key = p.key
    WHERE c.c IS DISTINCT FROM 1 OR o.c IS DISTINCT FROM 1) AS payments_not_once,
  :exact_secs::numeric AS exact_secs,
  :naive_secs::numeric AS naive_secs;

CREATE TEMP TABLE checks AS
SELECT * FROM (VALUES
  (1, 'every delivery consumed once, each outcome applied/duplicate/stale',
      (SELECT consumed = delivered AND other = 0 FROM n)),
  (2, 'each payment applied exactly once (per-key count of charges)',
      (SELECT payments_not_once = 0 AND exact_double = 0 FROM n)),
  (3, 'every balance = opening - sum of its distinct payments',
      (SELECT exact_bad_balance = 0 FROM n)),
  (4, 'every account holds its newest terms version',
      (SELECT exact_old_terms = 0 FROM n))
) AS c(no, what, ok);

SELECT line FROM (
  SELECT 1 AS part, no, line FROM n, LATERAL (VALUES
    (1,  format('idempotent demo: payment stream, %s concurrent consumers, seed %s',
                :consumers, :seed)),
    (2,  format('stream:  %s messages = %s payments (policy once) + %s account terms updates (policy newer), %s accounts',
                messages, payments, terms, accounts)),
    (3,  format('         %s deliveries = %s first + %s producer retries + %s broker redeliveries + %s after rebalances',
                delivered, firsts, retries, redeliveries, rebalanced)),
    (4,  ''),
    (5,  format('  %-36s %18s %18s', '', 'idem_apply', 'naive UPDATE')),
    (6,  format('  %-36s %18s %18s', 'deliveries consumed', consumed, delivered)),
    (7,  format('  %-36s %18s %18s', 'applied', applied, delivered)),
    (8,  format('  %-36s %18s %18s', 'duplicate (ran nothing)', duplicates, '-')),
    (9,  format('  %-36s %18s %18s', 'stale (older version, ran nothing)', stale, '-')),
    (10, format('  %-36s %18s %18s', 'raced another consumer on the key', raced, '-')),
    (11, format('  %-36s %18s %18s', 'double charges', exact_double, naive_double)),
    (12, format('  %-36s %18s %18s', 'money charged twice',
                to_char(exact_twice, 'FM999,999,990.00'), to_char(naive_twice, 'FM999,999,990.00'))),
    (13, format('  %-36s %18s %18s', 'accounts with a wrong balance',
                exact_bad_balance, naive_bad_balance)),
    (14, format('  %-36s %18s %18s', 'accounts left on older terms',
                exact_old_terms, naive_old_terms)),
    (15, format('  %-36s %18s %18s', 'wall time',
                round(exact_secs, 2) || ' s', round(naive_secs, 2) || ' s')),
    (16, format('  %-36s %18s %18s', 'throughput (deliveries/s)',
                round(delivered / nullif(exact_secs, 0)), round(delivered / nullif(naive_secs, 0)))),
    (17, ''),
    (18, '  raced: its call overlapped another consumer''s applying call on the same key, which it'),
    (19, '  waited for, then ran nothing. Counts of stale and raced vary a little with timing.'),
    (20, ''),
    (21, 'checks (idem_apply consumer):')
  ) AS l(no, line)
  UNION ALL
  SELECT 2, no, format('  %-68s %s', what, CASE WHEN ok THEN 'PASS' ELSE 'FAIL' END)
  FROM checks
  UNION ALL
  SELECT 3, 0, 'RESULT: ' || CASE WHEN bool_and(coalesce(ok, false)) THEN 'PASS' ELSE 'FAIL' END
  FROM checks
) AS report
ORDER BY part, no;

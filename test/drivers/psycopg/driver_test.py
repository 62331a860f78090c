"""psycopg 3 calling the idempotent extension with bound parameters, as an application would.

Run by test/scenarios/drivers.sh with Debian's /usr/bin/python3 and python3-psycopg, against the
database that test/drivers/setup.sql made; connects with the PG* environment variables. Prints one
line per assertion, `ok     psycopg: ...` or `FAILED psycopg: ...`, and exits 1 if any failed.
"""
import json
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import partial

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

DRIVER = "psycopg"
ACCOUNT = 200  # accounts 201..203 belong to this driver

# The statements the messages run.
PAY = "INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount"
SET_BALANCE = ("INSERT INTO accounts (id, balance) VALUES ($1, $2) "
               "ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance")
ADD_TO_BALANCE = ("INSERT INTO accounts (id, balance) VALUES ($1, $2) "
                  "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance")
TOTALS = "SELECT $1 AS amount, $2 AS total"
# A batch's consumer (README, "Batches"): one set-based statement for the messages not seen before.
CONSUME_BATCH = ("WITH fresh AS (SELECT ord FROM idem_claim_batch(%(ids)s::text[]) WHERE applied) "
                 "INSERT INTO payments (id, account, amount) SELECT m.id, m.account, m.amount "
                 "FROM unnest(%(ids)s::text[], %(accounts)s::int[], %(amounts)s::numeric[]) "
                 "WITH ORDINALITY AS m(id, account, amount, ord) JOIN fresh USING (ord)")

# json and jsonb numbers as Decimal, so that 975.00 stays Decimal('975.00'), not a float.
set_json_loads(partial(json.loads, parse_float=Decimal))

failures = 0


def check(name, ok, got):
    global failures
    if ok:
        print(f"ok     {DRIVER}: {name}")
    else:
        failures += 1
        print(f"FAILED {DRIVER}: {name}: got {got!r}")


def check_error(name, code, fn):
    """Check that fn() fails with SQLSTATE code."""
    try:
        check(name, False, fn())
    except psycopg.Error as e:
        check(name, e.sqlstate == code, f"{e.sqlstate} {e}")


def outcome(call):
    """call()'s outcome row, or the error as {'status': 'error ID001', ...}."""
    try:
        return call()
    except psycopg.Error as e:
        return {"status": f"error {e.sqlstate}", "message": str(e)}


def is_(out, status, applied):
    return out["status"] == status and out.get("applied") is applied


def pid(name):
    return f"{DRIVER}:{name}"  # payment ids of this driver


def key(name):
    return f"payment:{pid(name)}"


def pay(db, payment_id, account, amount):
    # A str sent to an "any" parameter needs its cast; int and Decimal carry their types.
    return db.execute("SELECT * FROM idem_apply(%s, NULL, %s, %s::text, %s, %s)",
                      (f"payment:{payment_id}", PAY, payment_id, account, amount)).fetchone()


def once(db):
    first = pay(db, pid("p-1"), ACCOUNT, Decimal("975.00"))
    check("once: applied", is_(first, "applied", True) and first["rows"] == 1
          and first["version"] is None and str(first["result"][0]["amount"]) == "975.00", first)
    again = pay(db, pid("p-1"), ACCOUNT, Decimal("975.00"))
    check("once: redelivery is a duplicate with the stored result", is_(again, "duplicate", False)
          and again["rows"] == 1 and again["result"] == first["result"], again)
    n = db.execute("SELECT count(*) AS n FROM payments WHERE id = %s", (pid("p-1"),)).fetchone()
    check("once: the payment exists once", n["n"] == 1, n)


def newer(db):
    def state(version, balance):
        return db.execute("SELECT * FROM idem_apply(%s, %s, %s, %s, %s)",
                          (f"account:{DRIVER}:1", version, SET_BALANCE, ACCOUNT + 1, balance)).fetchone()
    v2 = state(2, Decimal("20.00"))
    check("newer: version 2 applied", is_(v2, "applied", True) and v2["version"] == 2, v2)
    again = state(2, Decimal("20.00"))
    check("newer: version 2 again is a duplicate", is_(again, "duplicate", False), again)
    v1 = state(1, Decimal("10.00"))
    check("newer: version 1 is stale", is_(v1, "stale", False) and v1["version"] == 2, v1)
    v3 = state(3, Decimal("30.00"))
    check("newer: version 3 applied over 2", is_(v3, "applied", True) and v3["version"] == 3
          and v3["previous_version"] == 2, v3)


def next_(db):
    def delta(version, amount):
        return db.execute("SELECT * FROM idem_apply_next(%s, %s, %s, %s, %s)",
                          (f"account:{DRIVER}:2", version, ADD_TO_BALANCE, ACCOUNT + 2, amount)).fetchone()
    early = delta(2, Decimal("5.00"))
    check("next: version 2 of a new key is a gap", is_(early, "gap", False) and early["version"] is None, early)
    v1 = delta(1, Decimal("10.00"))
    check("next: version 1 applied", is_(v1, "applied", True) and v1["version"] == 1, v1)
    v2 = delta(2, Decimal("5.00"))
    check("next: version 2 applied", is_(v2, "applied", True) and v2["previous_version"] == 1, v2)
    skip = delta(4, Decimal("7.00"))
    check("next: version 4 after 2 is a gap", is_(skip, "gap", False) and skip["version"] == 2, skip)
    a = db.execute("SELECT balance FROM accounts WHERE id = %s", (ACCOUNT + 2,)).fetchone()
    check("next: balance is versions 1 and 2 added once each", a["balance"] == Decimal("15.00"), a)


def upsert(db):
    def state(version, balance):
        return db.execute("SELECT * FROM idem_upsert(%s, %s, %s, %s, %s)",
                          (f"account:{DRIVER}:3", version, SET_BALANCE, ACCOUNT + 3, balance)).fetchone()
    v1 = state(1, Decimal("1.00"))
    check("upsert: version 1 applied", is_(v1, "applied", True), v1)
    again = state(1, Decimal("1.50"))
    check("upsert: version 1 again applied", is_(again, "applied", True) and again["previous_version"] == 1, again)
    v0 = state(0, Decimal("0.00"))
    check("upsert: version 0 is stale", is_(v0, "stale", False), v0)


def claim(db):
    def consume(name, commit):
        # the consumer's own statements, in the same transaction as the claim
        with db.transaction():
            out = db.execute("SELECT * FROM idem_claim(%s)", (key(name),)).fetchone()
            if out["applied"]:
                db.execute("INSERT INTO payments (id, account, amount) VALUES (%s, %s, %s)",
                           (pid(name), ACCOUNT, Decimal("12.50")))
            if not commit:
                raise psycopg.Rollback()
        return out
    first = consume("p-2", True)
    check("claim: applied in the caller's transaction", is_(first, "applied", True), first)
    again = consume("p-2", True)
    check("claim: duplicate after the commit", is_(again, "duplicate", False), again)
    rolled_back = consume("p-3", False)
    retried = consume("p-3", True)
    check("claim: a rolled back claim records nothing", is_(rolled_back, "applied", True)
          and is_(retried, "applied", True), (rolled_back, retried))


def untyped(db):
    # psycopg sends a str untyped: PostgreSQL cannot tell what type an "any" argument should be
    args = (key("p-4"), PAY, pid("p-4"), ACCOUNT, Decimal("1.00"))
    check_error('"any": an untyped argument is 42P18', "42P18", lambda: db.execute(
        "SELECT * FROM idem_apply(%s, NULL, %s, %s, %s, %s)", args).fetchone())
    out = db.execute("SELECT * FROM idem_apply(%s, NULL, %s, %s::text, %s, %s)", args).fetchone()
    check('"any": with casts it applies', is_(out, "applied", True), out)


def results(db):
    def totals():
        return db.execute("SELECT * FROM idem_apply(%s, NULL, %s, %s, %s)",
                          (f"totals:{DRIVER}", TOTALS, Decimal("975.00"),
                           Decimal("12345678901234567.89"))).fetchone()

    def exact(out):
        row = out["result"][0]
        return (isinstance(row["amount"], Decimal) and str(row["amount"]) == "975.00"
                and str(row["total"]) == "12345678901234567.89")
    first = totals()
    check("result: numbers exact when applied", is_(first, "applied", True) and exact(first), first)
    again = totals()
    check("result: numbers exact in the replay", is_(again, "duplicate", False) and exact(again), again)


def errors(db):
    pay(db, pid("p-5"), ACCOUNT, Decimal("5.00"))
    check_error("ID001: same key, another amount", "ID001", lambda: pay(db, pid("p-5"), ACCOUNT, Decimal("6.00")))
    check_error("ID002: same key, another policy", "ID002", lambda: db.execute(
        "SELECT * FROM idem_apply_next(%s, 1, %s, %s::text, %s, %s)",
        (key("p-5"), PAY, pid("p-5"), ACCOUNT, Decimal("5.00"))).fetchone())


def redelivery(db):
    # Payment x:p-1 was applied before this driver ran (test/drivers/setup.sql), as
    # 'x:p-1'::text, 42 (int4), 25.00 (numeric); psycopg sends the int 42 as int2.
    out = outcome(lambda: pay(db, "x:p-1", 42, Decimal("25.00")))
    check("redelivery of x:p-1 is a duplicate with its result", is_(out, "duplicate", False)
          and out["rows"] == 1 and str(out["result"][0]["amount"]) == "25.00", out)


def consume_batch(db, ids, accounts, amounts):
    # Python lists are sent as arrays (a list of str untyped, as a str is): cast each one.
    with db.transaction():
        return db.execute(CONSUME_BATCH, {"ids": ids, "accounts": accounts, "amounts": amounts}).rowcount


def batch(db):
    def row(ord_, k, status, applied):
        return {"ord": ord_, "key": k, "status": status, "applied": applied}
    keys = [f"batch:{DRIVER}:1", f"batch:{DRIVER}:2", f"batch:{DRIVER}:1"]
    claimed = db.execute("SELECT ord, key, status, applied FROM idem_claim_batch(%s::text[])",
                         (keys,)).fetchall()
    check("batch: one row per element in input order, a repeated key a duplicate", claimed == [
        row(1, keys[0], "applied", True), row(2, keys[1], "applied", True),
        row(3, keys[0], "duplicate", False)], claimed)
    account = [f"batch:{DRIVER}:a", f"batch:{DRIVER}:a", f"batch:{DRIVER}:a", f"batch:{DRIVER}:b"]
    versioned = db.execute("SELECT ord, key, status, applied FROM idem_claim_batch(%s::text[], %s::bigint[])",
                           (account, [3, 5, 4, 1])).fetchall()
    check("batch: versions 3, 5, 4 of a key are applied, applied, stale", versioned == [
        row(1, account[0], "applied", True), row(2, account[0], "applied", True),
        row(3, account[0], "stale", False), row(4, account[3], "applied", True)], versioned)

    ids = [pid("b-1"), pid("b-2"), pid("b-1"), pid("b-3")]
    amounts = [Decimal("975.00"), Decimal("0.10"), Decimal("975.00"), Decimal("12345678901234567.89")]
    first = consume_batch(db, ids, [ACCOUNT] * len(ids), amounts)
    check("batch: the set-based statement inserts each message of the batch once", first == 3, first)
    again = consume_batch(db, ids, [ACCOUNT] * len(ids), amounts)
    check("batch: the batch redelivered inserts nothing", again == 0, again)
    paid = db.execute("SELECT id, amount FROM payments WHERE id = ANY(%s::text[]) ORDER BY id",
                      (ids,)).fetchall()
    check("batch: amounts exact through numeric[]", [(p["id"], str(p["amount"])) for p in paid] == [
        (pid("b-1"), "975.00"), (pid("b-2"), "0.10"), (pid("b-3"), "12345678901234567.89")], paid)


def begin(db, k, request):
    # A request as Jsonb(dict); a result whose Decimals must stay exact goes as JSON text, as
    # json.dumps cannot write a Decimal as a number.
    return db.execute("SELECT * FROM idem_begin(%s, %s::interval, %s::jsonb)",
                      (k, timedelta(hours=1), Jsonb(request))).fetchone()


def lease(db):
    mail = f"receipt:{DRIVER}:1"
    request = {"to": "ann@example.com", "payment": pid("p-1")}
    first = begin(db, mail, request)
    check("lease: started, attempt 1", first["status"] == "started" and first["attempt"] == 1
          and first["lease_until"] > datetime.now(timezone.utc), first)
    held = begin(db, mail, request)
    check("lease: a second begin is in_progress", held["status"] == "in_progress" and held["attempt"] == 1, held)
    db.execute("SELECT idem_complete(%s, %s, %s::jsonb)",
               (mail, first["attempt"], '{"amount": 975.00, "total": 12345678901234567.89}'))
    later = begin(db, mail, request)
    check("lease: after idem_complete a duplicate with the result exact", later["status"] == "duplicate"
          and later["result"] is not None and str(later["result"].get("amount")) == "975.00"
          and str(later["result"].get("total")) == "12345678901234567.89", later)
    check_error("lease: ID001: same key, another request", "ID001",
                lambda: begin(db, mail, {"to": "bob@example.com", "payment": pid("p-1")}))
    check_error("lease: ID003: idem_complete of an attempt that no longer holds the key", "ID003",
                lambda: db.execute("SELECT idem_complete(%s, %s, %s::jsonb)", (mail, first["attempt"], "{}")))

    # a poison message: its transaction failed, its failure is recorded in a transaction of its own
    failed = outcome(lambda: pay(db, pid("p-6"), ACCOUNT, Decimal("1e30")))
    check("idem_fail: the payment fails (22003)", failed["status"] == "error 22003", failed)
    counted = db.execute("SELECT * FROM idem_fail(%s, NULL, %s)", (key("p-6"), failed.get("message"))).fetchone()
    check("idem_fail: an ordinary key's failure is counted", counted["status"] == "failed"
          and counted["attempt"] == 1, counted)
    got = db.execute("SELECT state, attempts, last_error FROM idem_get(%s)", (key("p-6"),)).fetchone()
    check("idem_fail: idem_get shows 1 attempt", got["state"] == "failed" and got["attempts"] == 1
          and got["last_error"] == failed.get("message"), got)


SECTIONS = [once, newer, next_, upsert, claim, untyped, results, errors, redelivery, batch, lease]


def main():
    # PGHOST, PGPORT, PGUSER, PGDATABASE; autocommit: each call commits unless in db.transaction()
    with psycopg.connect(autocommit=True, row_factory=dict_row) as db:
        for section in SECTIONS:
            try:
                section(db)
            except Exception as e:  # report it and go on with the next section
                check(f"{section.__name__.rstrip('_')}: no unexpected error", False,
                      f"{getattr(e, 'sqlstate', None)} {e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

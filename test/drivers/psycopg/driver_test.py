"""psycopg 3 calling the idempotent extension with bound parameters, as an application would.

Run by test/scenarios/drivers.sh with Debian's /usr/bin/python3 and python3-psycopg, against the
database that test/drivers/setup.sql made; connects with the PG* environment variables. Prints one
line per assertion, `ok     psycopg: ...` or `FAILED psycopg: ...`, and exits 1 if any failed.
"""
import json
import sys
from decimal import Decimal
from functools import partial

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

DRIVER = "psycopg"
ACCOUNT = 200  # accounts 201..203 belong to this driver

# The statements the messages run.
PAY = "INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount"
SET_BALANCE = ("INSERT INTO accounts (id, balance) VALUES ($1, $2) "
               "ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance")
ADD_TO_BALANCE = ("INSERT INTO accounts (id, balance) VALUES ($1, $2) "
                  "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance")
TOTALS = "SELECT $1 AS amount, $2 AS total"

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


def batch(db):
    """idem_claim_batch: its assertions go here."""


def lease(db):
    """Leases (idem_begin, idem_complete, idem_fail; ID003): their assertions go here."""


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

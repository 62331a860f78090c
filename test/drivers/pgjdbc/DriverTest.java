// test/drivers/pgjdbc/DriverTest.java: pgjdbc calling the idempotent extension with bound
// parameters (PreparedStatement), as an application would. Run by test/scenarios/drivers.sh against
// the database that test/drivers/setup.sql made; connects to PGHOST:PGPORT/PGDATABASE as PGUSER.
// Prints one line per assertion, `ok     pgjdbc: ...` or `FAILED pgjdbc: ...`, and exits 1 if any
// failed.

import java.math.BigDecimal;
import java.sql.Array;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

public class DriverTest {
    static final String DRIVER = "pgjdbc";
    static final int ACCOUNT = 400; // accounts 401..403 belong to this driver

    // The statements the messages run.
    static final String PAY =
        "INSERT INTO payments (id, account, amount) VALUES ($1, $2, $3) RETURNING id, account, amount";
    static final String SET_BALANCE = "INSERT INTO accounts (id, balance) VALUES ($1, $2) "
        + "ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance";
    static final String ADD_TO_BALANCE = "INSERT INTO accounts (id, balance) VALUES ($1, $2) "
        + "ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance";
    static final String TOTALS = "SELECT $1 AS amount, $2 AS total";
    // A batch's consumer (README, "Batches"): one set-based statement for the messages not seen
    // before. JDBC binds each ? once, so the ids are bound twice.
    static final String CONSUME_BATCH =
        "WITH fresh AS (SELECT ord FROM idem_claim_batch(?::text[]) WHERE applied) "
        + "INSERT INTO payments (id, account, amount) SELECT m.id, m.account, m.amount "
        + "FROM unnest(?::text[], ?::int[], ?::numeric[]) WITH ORDINALITY AS m(id, account, amount, ord) "
        + "JOIN fresh USING (ord)";

    /** One idem_outcome row; result is jsonb's text, numbers exactly as stored. */
    record Outcome(String status, boolean applied, Long version, Long previousVersion, Long rows,
                   String result) {
        static Outcome of(ResultSet rs) throws SQLException {
            rs.next();
            return new Outcome(rs.getString("status"), rs.getBoolean("applied"),
                rs.getObject("version", Long.class), rs.getObject("previous_version", Long.class),
                rs.getObject("rows", Long.class), rs.getString("result"));
        }

        boolean is(String status, boolean applied) {
            return status.equals(this.status) && applied == this.applied;
        }
    }

    /** A call's parameters, bound in order by the typed setters. */
    interface Binder {
        void bind(PreparedStatement ps) throws SQLException;
    }

    /** A statement that may fail. */
    interface Call {
        Object run() throws SQLException;
    }

    static Connection db;
    static int failures;

    static void check(String name, boolean ok, Object got) {
        if (ok) {
            System.out.println("ok     " + DRIVER + ": " + name);
        } else {
            failures++;
            System.out.println("FAILED " + DRIVER + ": " + name + ": got " + got);
        }
    }

    /** Checks that call fails with SQLSTATE code. */
    static void checkError(String name, String code, Call call) {
        try {
            check(name, false, call.run());
        } catch (SQLException e) {
            check(name, code.equals(e.getSQLState()), e.getSQLState() + " " + e.getMessage());
        }
    }

    static Outcome call(String sql, Binder binder) throws SQLException {
        try (PreparedStatement ps = db.prepareStatement(sql)) {
            binder.bind(ps);
            try (ResultSet rs = ps.executeQuery()) {
                return Outcome.of(rs);
            }
        }
    }

    static String id(String name) {
        return DRIVER + ":" + name; // payment ids of this driver
    }

    static String key(String name) {
        return "payment:" + id(name);
    }

    // setString sends varchar, setInt int4, setBigDecimal numeric: typed, so no cast is needed.
    static Outcome pay(String id, int account, BigDecimal amount) throws SQLException {
        return call("SELECT * FROM idem_apply(?, NULL, ?, ?, ?, ?)", ps -> {
            ps.setString(1, "payment:" + id);
            ps.setString(2, PAY);
            ps.setString(3, id);
            ps.setInt(4, account);
            ps.setBigDecimal(5, amount);
        });
    }

    static void once() throws SQLException {
        Outcome first = pay(id("p-1"), ACCOUNT, new BigDecimal("975.00"));
        check("once: applied", first.is("applied", true) && first.rows() == 1 && first.version() == null
            && first.result().contains("\"amount\": 975.00"), first);
        Outcome again = pay(id("p-1"), ACCOUNT, new BigDecimal("975.00"));
        check("once: redelivery is a duplicate with the stored result", again.is("duplicate", false)
            && again.rows() == 1 && Objects.equals(again.result(), first.result()), again);
        try (PreparedStatement ps = db.prepareStatement("SELECT count(*) FROM payments WHERE id = ?")) {
            ps.setString(1, id("p-1"));
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check("once: the payment exists once", rs.getLong(1) == 1, rs.getLong(1));
            }
        }
    }

    static Outcome state(String function, String key, long version, int account, String statement,
                         String amount) throws SQLException {
        return call("SELECT * FROM " + function + "(?, ?, ?, ?, ?)", ps -> {
            ps.setString(1, key);
            ps.setLong(2, version);
            ps.setString(3, statement);
            ps.setInt(4, account);
            ps.setBigDecimal(5, new BigDecimal(amount));
        });
    }

    static void newer() throws SQLException {
        String key = "account:" + DRIVER + ":1";
        Outcome v2 = state("idem_apply", key, 2, ACCOUNT + 1, SET_BALANCE, "20.00");
        check("newer: version 2 applied", v2.is("applied", true) && v2.version() == 2, v2);
        Outcome again = state("idem_apply", key, 2, ACCOUNT + 1, SET_BALANCE, "20.00");
        check("newer: version 2 again is a duplicate", again.is("duplicate", false), again);
        Outcome v1 = state("idem_apply", key, 1, ACCOUNT + 1, SET_BALANCE, "10.00");
        check("newer: version 1 is stale", v1.is("stale", false) && v1.version() == 2, v1);
        Outcome v3 = state("idem_apply", key, 3, ACCOUNT + 1, SET_BALANCE, "30.00");
        check("newer: version 3 applied over 2", v3.is("applied", true) && v3.version() == 3
            && v3.previousVersion() == 2, v3);
    }

    static void next() throws SQLException {
        String key = "account:" + DRIVER + ":2";
        Outcome early = state("idem_apply_next", key, 2, ACCOUNT + 2, ADD_TO_BALANCE, "5.00");
        check("next: version 2 of a new key is a gap", early.is("gap", false) && early.version() == null, early);
        Outcome v1 = state("idem_apply_next", key, 1, ACCOUNT + 2, ADD_TO_BALANCE, "10.00");
        check("next: version 1 applied", v1.is("applied", true) && v1.version() == 1, v1);
        Outcome v2 = state("idem_apply_next", key, 2, ACCOUNT + 2, ADD_TO_BALANCE, "5.00");
        check("next: version 2 applied", v2.is("applied", true) && v2.previousVersion() == 1, v2);
        Outcome skip = state("idem_apply_next", key, 4, ACCOUNT + 2, ADD_TO_BALANCE, "7.00");
        check("next: version 4 after 2 is a gap", skip.is("gap", false) && skip.version() == 2, skip);
        try (PreparedStatement ps = db.prepareStatement("SELECT balance FROM accounts WHERE id = ?")) {
            ps.setInt(1, ACCOUNT + 2);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check("next: balance is versions 1 and 2 added once each",
                    "15.00".equals(rs.getString(1)), rs.getString(1));
            }
        }
    }

    static void upsert() throws SQLException {
        String key = "account:" + DRIVER + ":3";
        Outcome v1 = state("idem_upsert", key, 1, ACCOUNT + 3, SET_BALANCE, "1.00");
        check("upsert: version 1 applied", v1.is("applied", true), v1);
        Outcome again = state("idem_upsert", key, 1, ACCOUNT + 3, SET_BALANCE, "1.50");
        check("upsert: version 1 again applied", again.is("applied", true) && again.previousVersion() == 1, again);
        Outcome v0 = state("idem_upsert", key, 0, ACCOUNT + 3, SET_BALANCE, "0.00");
        check("upsert: version 0 is stale", v0.is("stale", false), v0);
    }

    // The consumer's own statements, in the same transaction as the claim.
    static Outcome consume(String name, boolean commit) throws SQLException {
        db.setAutoCommit(false);
        try {
            Outcome out = call("SELECT * FROM idem_claim(?)", ps -> ps.setString(1, key(name)));
            if (out.applied()) {
                try (PreparedStatement ps = db.prepareStatement(
                        "INSERT INTO payments (id, account, amount) VALUES (?, ?, ?)")) {
                    ps.setString(1, id(name));
                    ps.setInt(2, ACCOUNT);
                    ps.setBigDecimal(3, new BigDecimal("12.50"));
                    ps.executeUpdate();
                }
            }
            if (commit) {
                db.commit();
            } else {
                db.rollback();
            }
            return out;
        } finally {
            db.setAutoCommit(true); // rolls back whatever an error left open
        }
    }

    static void claim() throws SQLException {
        Outcome first = consume("p-2", true);
        check("claim: applied in the caller's transaction", first.is("applied", true), first);
        Outcome again = consume("p-2", true);
        check("claim: duplicate after the commit", again.is("duplicate", false), again);
        Outcome rolledBack = consume("p-3", false);
        Outcome retried = consume("p-3", true);
        check("claim: a rolled back claim records nothing", rolledBack.is("applied", true)
            && retried.is("applied", true), rolledBack + " " + retried);
    }

    // setTimestamp sends its value untyped (timestamp or timestamptz), as do setObject(i, null) and
    // setString with stringtype=unspecified: PostgreSQL cannot tell what an "any" argument should be.
    static void untyped() throws SQLException {
        String statement = "UPDATE payments SET received_at = $2 WHERE id = $1";
        Timestamp at = Timestamp.valueOf("2024-05-01 12:00:00");
        checkError("\"any\": an untyped argument is 42P18", "42P18", () -> call(
            "SELECT * FROM idem_apply(?, NULL, ?, ?, ?)", ps -> {
                ps.setString(1, "received:" + id("p-1"));
                ps.setString(2, statement);
                ps.setString(3, id("p-1"));
                ps.setTimestamp(4, at);
            }));
        Outcome out = call("SELECT * FROM idem_apply(?, NULL, ?, ?, ?::timestamptz)", ps -> {
            ps.setString(1, "received:" + id("p-1"));
            ps.setString(2, statement);
            ps.setString(3, id("p-1"));
            ps.setTimestamp(4, at);
        });
        check("\"any\": with casts it applies", out.is("applied", true) && out.rows() == 1, out);
    }

    static void results() throws SQLException {
        String exact = "[{\"total\": 12345678901234567.89, \"amount\": 975.00}]";
        Binder totals = ps -> {
            ps.setString(1, "totals:" + DRIVER);
            ps.setString(2, TOTALS);
            ps.setBigDecimal(3, new BigDecimal("975.00"));
            ps.setBigDecimal(4, new BigDecimal("12345678901234567.89"));
        };
        Outcome first = call("SELECT * FROM idem_apply(?, NULL, ?, ?, ?)", totals);
        check("result: numbers exact when applied", first.is("applied", true) && exact.equals(first.result()), first);
        Outcome again = call("SELECT * FROM idem_apply(?, NULL, ?, ?, ?)", totals);
        check("result: numbers exact in the replay", again.is("duplicate", false) && exact.equals(again.result()), again);
    }

    static void errors() throws SQLException {
        pay(id("p-5"), ACCOUNT, new BigDecimal("5.00"));
        checkError("ID001: same key, another amount", "ID001", () -> pay(id("p-5"), ACCOUNT, new BigDecimal("6.00")));
        checkError("ID002: same key, another policy", "ID002", () -> call(
            "SELECT * FROM idem_apply_next(?, 1, ?, ?, ?, ?)", ps -> {
                ps.setString(1, key("p-5"));
                ps.setString(2, PAY);
                ps.setString(3, id("p-5"));
                ps.setInt(4, ACCOUNT);
                ps.setBigDecimal(5, new BigDecimal("5.00"));
            }));
    }

    // Payment x:p-1 was applied before this driver ran (test/drivers/setup.sql), as 'x:p-1'::text,
    // 42 (int4), 25.00 (numeric); pgjdbc's setString sends varchar.
    static void redelivery() throws SQLException {
        Object got;
        boolean ok;
        try {
            Outcome out = pay("x:p-1", 42, new BigDecimal("25.00"));
            got = out;
            ok = out.is("duplicate", false) && out.rows() == 1 && out.result().contains("\"amount\": 25.00");
        } catch (SQLException e) {
            got = e.getSQLState() + " " + e.getMessage();
            ok = false;
        }
        check("redelivery of x:p-1 is a duplicate with its result", ok, got);
    }

    /** The rows of a query, each as its columns' text joined by spaces. */
    static List<String> rows(String sql, Binder binder) throws SQLException {
        List<String> rows = new ArrayList<>();
        try (PreparedStatement ps = db.prepareStatement(sql)) {
            binder.bind(ps);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    StringBuilder row = new StringBuilder();
                    for (int i = 1; i <= rs.getMetaData().getColumnCount(); i++) {
                        row.append(i > 1 ? " " : "").append(rs.getString(i));
                    }
                    rows.add(row.toString());
                }
            }
        }
        return rows;
    }

    // createArrayOf gives each array its type; the batch's statements run in one transaction.
    static int consumeBatch(String[] ids, Integer[] accounts, BigDecimal[] amounts) throws SQLException {
        db.setAutoCommit(false);
        try (PreparedStatement ps = db.prepareStatement(CONSUME_BATCH)) {
            Array idArray = db.createArrayOf("text", ids);
            ps.setArray(1, idArray);
            ps.setArray(2, idArray);
            ps.setArray(3, db.createArrayOf("integer", accounts));
            ps.setArray(4, db.createArrayOf("numeric", amounts));
            int inserted = ps.executeUpdate();
            db.commit();
            return inserted;
        } finally {
            db.setAutoCommit(true); // rolls back whatever an error left open
        }
    }

    static void batch() throws SQLException {
        String[] keys = {"batch:" + DRIVER + ":1", "batch:" + DRIVER + ":2", "batch:" + DRIVER + ":1"};
        List<String> claimed = rows("SELECT ord, key, status, applied FROM idem_claim_batch(?::text[])",
            ps -> ps.setArray(1, db.createArrayOf("text", keys)));
        check("batch: one row per element in input order, a repeated key a duplicate", claimed.equals(List.of(
            "1 " + keys[0] + " applied t", "2 " + keys[1] + " applied t", "3 " + keys[0] + " duplicate f")),
            claimed);
        String[] account = {"batch:" + DRIVER + ":a", "batch:" + DRIVER + ":a", "batch:" + DRIVER + ":a",
            "batch:" + DRIVER + ":b"};
        List<String> versioned = rows(
            "SELECT ord, key, status, applied FROM idem_claim_batch(?::text[], ?::bigint[])", ps -> {
                ps.setArray(1, db.createArrayOf("text", account));
                ps.setArray(2, db.createArrayOf("bigint", new Long[] {3L, 5L, 4L, 1L}));
            });
        check("batch: versions 3, 5, 4 of a key are applied, applied, stale", versioned.equals(List.of(
            "1 " + account[0] + " applied t", "2 " + account[0] + " applied t", "3 " + account[0] + " stale f",
            "4 " + account[3] + " applied t")), versioned);

        String[] ids = {id("b-1"), id("b-2"), id("b-1"), id("b-3")};
        Integer[] accounts = {ACCOUNT, ACCOUNT, ACCOUNT, ACCOUNT};
        BigDecimal[] amounts = {new BigDecimal("975.00"), new BigDecimal("0.10"), new BigDecimal("975.00"),
            new BigDecimal("12345678901234567.89")};
        int first = consumeBatch(ids, accounts, amounts);
        check("batch: the set-based statement inserts each message of the batch once", first == 3, first);
        int again = consumeBatch(ids, accounts, amounts);
        check("batch: the batch redelivered inserts nothing", again == 0, again);
        List<String> paid = new ArrayList<>();
        try (PreparedStatement ps = db.prepareStatement(
                "SELECT id, amount FROM payments WHERE id = ANY(?) ORDER BY id")) {
            ps.setArray(1, db.createArrayOf("text", ids));
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    paid.add(rs.getString("id") + " " + rs.getBigDecimal("amount").toPlainString());
                }
            }
        }
        check("batch: amounts exact through numeric[]", paid.equals(List.of(id("b-1") + " 975.00",
            id("b-2") + " 0.10", id("b-3") + " 12345678901234567.89")), paid);
    }

    /** One idem_lease row; result is jsonb's text, numbers exactly as stored. */
    record Lease(String status, int attempt, Timestamp leaseUntil, String result, String lastError) {
        static Lease of(ResultSet rs) throws SQLException {
            rs.next();
            return new Lease(rs.getString("status"), rs.getInt("attempt"), rs.getTimestamp("lease_until"),
                rs.getString("result"), rs.getString("last_error"));
        }
    }

    // setString sends varchar: the casts make the interval and the jsonb of its text.
    static Lease begin(String key, String request) throws SQLException {
        try (PreparedStatement ps = db.prepareStatement("SELECT * FROM idem_begin(?, ?::interval, ?::jsonb)")) {
            ps.setString(1, key);
            ps.setString(2, "1 hour");
            ps.setString(3, request);
            try (ResultSet rs = ps.executeQuery()) {
                return Lease.of(rs);
            }
        }
    }

    static Object complete(String key, int attempt, String result) throws SQLException {
        try (PreparedStatement ps = db.prepareStatement("SELECT idem_complete(?, ?, ?::jsonb)")) {
            ps.setString(1, key);
            ps.setInt(2, attempt);
            ps.setString(3, result);
            try (ResultSet rs = ps.executeQuery()) {
                return rs.next();
            }
        }
    }

    static void lease() throws SQLException {
        String mail = "receipt:" + DRIVER + ":1";
        String request = "{\"to\": \"ann@example.com\", \"payment\": \"" + id("p-1") + "\"}";
        Lease first = begin(mail, request);
        check("lease: started, attempt 1", "started".equals(first.status()) && first.attempt() == 1
            && first.leaseUntil().after(new Timestamp(System.currentTimeMillis())), first);
        Lease held = begin(mail, request);
        check("lease: a second begin is in_progress", "in_progress".equals(held.status()) && held.attempt() == 1,
            held);
        complete(mail, first.attempt(), "{\"amount\": 975.00, \"total\": 12345678901234567.89}");
        Lease later = begin(mail, request);
        check("lease: after idem_complete a duplicate with the result exact", "duplicate".equals(later.status())
            && "{\"total\": 12345678901234567.89, \"amount\": 975.00}".equals(later.result()), later);
        checkError("lease: ID001: same key, another request", "ID001", () -> begin(mail,
            "{\"to\": \"bob@example.com\", \"payment\": \"" + id("p-1") + "\"}"));
        checkError("lease: ID003: idem_complete of an attempt that no longer holds the key", "ID003",
            () -> complete(mail, first.attempt(), "{}"));

        // a poison message: its transaction failed, its failure is recorded in a transaction of its own
        String state = null;
        String error = null;
        try {
            pay(id("p-6"), ACCOUNT, new BigDecimal("1e30"));
        } catch (SQLException e) {
            state = e.getSQLState();
            error = e.getMessage();
        }
        check("idem_fail: the payment fails (22003)", "22003".equals(state), state + " " + error);
        String lastError = error;
        Lease counted;
        try (PreparedStatement ps = db.prepareStatement("SELECT * FROM idem_fail(?, NULL, ?)")) {
            ps.setString(1, key("p-6"));
            ps.setString(2, lastError);
            try (ResultSet rs = ps.executeQuery()) {
                counted = Lease.of(rs);
            }
        }
        check("idem_fail: an ordinary key's failure is counted", "failed".equals(counted.status())
            && counted.attempt() == 1, counted);
        List<String> got = rows("SELECT state, attempts, last_error = ? FROM idem_get(?)", ps -> {
            ps.setString(1, lastError);
            ps.setString(2, key("p-6"));
        });
        check("idem_fail: idem_get shows 1 attempt", got.equals(List.of("failed 1 t")), got);
    }

    interface Section {
        void run() throws SQLException;
    }

    public static void main(String[] args) throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("PGHOST") + ":" + System.getenv("PGPORT")
            + "/" + System.getenv("PGDATABASE");
        db = DriverManager.getConnection(url, System.getenv("PGUSER"), "");
        Object[][] sections = {
            {"once", (Section) DriverTest::once}, {"newer", (Section) DriverTest::newer},
            {"next", (Section) DriverTest::next}, {"upsert", (Section) DriverTest::upsert},
            {"claim", (Section) DriverTest::claim}, {"untyped", (Section) DriverTest::untyped},
            {"results", (Section) DriverTest::results}, {"errors", (Section) DriverTest::errors},
            {"redelivery", (Section) DriverTest::redelivery}, {"batch", (Section) DriverTest::batch},
            {"lease", (Section) DriverTest::lease},
        };
        for (Object[] section : sections) {
            try {
                ((Section) section[1]).run();
            } catch (SQLException e) {
                check(section[0] + ": no unexpected error", false, e.getSQLState() + " " + e.getMessage());
            }
        }
        db.close();
        System.exit(failures == 0 ? 0 : 1);
    }
}

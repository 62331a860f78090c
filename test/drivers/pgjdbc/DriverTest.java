// test/drivers/pgjdbc/DriverTest.java: pgjdbc calling the idempotent extension with bound
// parameters (PreparedStatement), as an application would. Run by test/scenarios/drivers.sh against
// the database that test/drivers/setup.sql made; connects to PGHOST:PGPORT/PGDATABASE as PGUSER.
// Prints one line per assertion, `ok     pgjdbc: ...` or `FAILED pgjdbc: ...`, and exits 1 if any
// failed.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;
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

    // idem_claim_batch: its assertions go here.
    static void batch() {
    }

    // Leases (idem_begin, idem_complete, idem_fail; ID003): their assertions go here.
    static void lease() {
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

/*
 * ledger.h
 *	  Direct access to the ledger table: probe a key, lock it, write it.
 */
#ifndef IDEM_LEDGER_H
#define IDEM_LEDGER_H

#include "idempotent.h"
#include "key_locks.h"

#include "access/genam.h"
#include "executor/tuptable.h"
#include "utils/snapshot.h"
#include "storage/itemptr.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

/* An open ledger: the heap, its unique index on (key, scope), and what probes reuse. */
typedef struct Ledger
{
	Relation	heap;
	Relation	index;
	TupleTableSlot *slot;
	SnapshotData dirty;			/* reports who is writing a probed row */
	IndexScanDesc scan;			/* begun by the first probe */
	text	   *probed_scope;	/* the last probed key, the caller's */
	text	   *probed_key;
	uint64		probed_hash;	/* its hash, when releases are counted */
	uint64		releases_at_probe;	/* of its lock, then (key_locks.c) */
} Ledger;

/* One ledger row, as read by a probe or about to be written. */
typedef struct LedgerRow
{
	ItemPointerData tid;		/* where a probe found it */
	IdemPolicy	policy;
	bool		has_version;
	int64		version;
	bool		has_rows;
	int64		rows;
	bool		has_fingerprint;
	int64		fingerprint;	/* request identity by value (1.2 on) */
	bool		has_legacy_fingerprint;
	int64		legacy_fingerprint; /* identity as 1.0 and 1.1 computed it */
	bool		has_applied;	/* false: a key that only counts failures of
								 * messages that never applied (applied_at NULL) */
	TimestampTz applied_at;
	Jsonb	   *result;			/* NULL when none; from a probe: possibly
								 * toasted, valid until the next probe */
	bool		has_expiry;
	TimestampTz expires_at;		/* the key counts as absent from then on */
	/* leases and failures (1.2); ledger_stamp_row() sets an ordinary key's */
	char		state;			/* IDEM_STATE_*; IDEM_STATE_NONE when NULL */
	int32		attempts;		/* lease keys: attempts begun; others: failures */
	bool		has_lease_until;
	TimestampTz lease_until;	/* end of the lease, or of the wait for a retry */
	text	   *last_error;		/* NULL when none; from a probe: as result */
} LedgerRow;

typedef enum LedgerProbe
{
	LEDGER_ABSENT,				/* no live row for the key */
	LEDGER_FOUND,				/* a committed (or our own) row */
	LEDGER_BUSY					/* another transaction is writing the key */
} LedgerProbe;

/* Who is writing a busy key, for ledger_wait(). */
typedef struct LedgerWriter
{
	TransactionId xid;
	uint32		spec_token;
} LedgerWriter;

extern void ledger_open(Ledger *ledger);
extern void ledger_close(Ledger *ledger);
extern bool ledger_stores_fingerprint(void);
extern LedgerProbe ledger_probe(Ledger *ledger, text *scope, text *key,
								LedgerRow *row, LedgerWriter *writer);
extern void ledger_end_probe(Ledger *ledger);
extern bool ledger_read(Ledger *ledger, text *scope, text *key, LedgerRow *row);
extern void ledger_wait(Ledger *ledger, const LedgerWriter *writer);
extern LedgerProbe ledger_probe_settled(Ledger *ledger, text *scope, text *key,
										LedgerRow *row, bool *locked, bool wait);
extern bool ledger_probe_locked(Ledger *ledger, text *scope, text *key, LedgerRow *row);
extern bool ledger_lock_probed_key(Ledger *ledger, bool wait, bool *probe_holds);
extern void ledger_insert(Ledger *ledger, text *scope, text *key, const LedgerRow *row);
extern void ledger_update(Ledger *ledger, text *scope, text *key, const LedgerRow *row);
extern void ledger_write(Ledger *ledger, text *scope, text *key, LedgerRow *row,
						 const LedgerRow *found);
extern bool ledger_delete(Ledger *ledger, ItemPointer tid, bool wait);
extern int64 ledger_purge(Ledger *ledger, int64 max_keys, TimestampTz now, text *scope);
extern bool ledger_row_expired(const LedgerRow *row);
extern void ledger_stamp_row(LedgerRow *row, text *scope, text *key);
extern bool ledger_stores_leases(void);

/* apply.c: the protocol's steps that idem_claim_batch (batch.c) shares */
extern bool idem_decide(const IdemRequest *req, const LedgerRow *row, IdemOutcome *out);
extern void idem_new_row(const IdemRequest *req, LedgerRow *row);

/* apply.c: what a call decides against (dead keys, leases), shared with batch.c */
extern const LedgerRow *idem_decision_row(const IdemRequest *req, LedgerProbe probe,
										  const LedgerRow *row, bool *dead);
extern void idem_dead_outcome(const LedgerRow *row, IdemOutcome *out);
extern void idem_in_progress_outcome(IdemOutcome *out);

#endif							/* IDEM_LEDGER_H */

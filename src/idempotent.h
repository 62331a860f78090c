/*
 * idempotent.h
 *	  Types and settings shared by the parts of the idempotent extension.
 *
 * A request names a scope, a key, a policy and (for versioned policies) a
 * version; apply.c decides its outcome against the ledger (ledger.c) and
 * runs the caller's statement (statement.c) when the outcome is "applied".
 * Policies and statuses are described once, in policy.c; settings once, in
 * settings.c.
 */
#ifndef IDEMPOTENT_H
#define IDEMPOTENT_H

#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/jsonb.h"

/* SQLSTATEs of our own, in class ID ("idempotent") */
#define ERRCODE_IDEM_FINGERPRINT_MISMATCH	MAKE_SQLSTATE('I','D','0','0','1')
#define ERRCODE_IDEM_POLICY_MISMATCH		MAKE_SQLSTATE('I','D','0','0','2')
#define ERRCODE_IDEM_ATTEMPT_FENCED		MAKE_SQLSTATE('I','D','0','0','3')

/* Policies; the letter is what the ledger stores in its "policy" column. */
typedef enum IdemPolicy
{
	IDEM_ONCE = 'o',			/* run once per key */
	IDEM_NEWER = 'n',			/* run when version > stored */
	IDEM_NEXT = 's',			/* run when version = stored + 1 (sequence) */
	IDEM_UPSERT = 'u',			/* run when version >= stored */
	IDEM_LEASE = 'l'			/* held by leases (idem_begin), lease.c */
} IdemPolicy;

/*
 * States of a key in the ledger's "state" column; an ordinary key applied
 * without failures has none (NULL).  Lease keys go through leased,
 * completed, failed (waiting for a retry) and dead; an ordinary key whose
 * messages failed (idem_fail without an attempt) is failed or dead.
 */
#define IDEM_STATE_NONE			'\0'
#define IDEM_STATE_LEASED		'l'
#define IDEM_STATE_COMPLETED	'c'
#define IDEM_STATE_FAILED		'f'
#define IDEM_STATE_DEAD			'd'

/* Outcomes of a call; names and statistics columns are in policy.c. */
typedef enum IdemStatus
{
	IDEM_APPLIED,
	IDEM_DUPLICATE,
	IDEM_STALE,
	IDEM_GAP,
	IDEM_IN_PROGRESS,
	IDEM_DEAD,					/* failed idempotent.max_attempts times */
	IDEM_STARTED,				/* idem_begin: the caller holds a new attempt */
	IDEM_FAILED,				/* idem_fail: the attempt ended in failure */
	IDEM_COMPLETED,				/* idem_complete: the attempt completed */
	IDEM_NSTATUSES
} IdemStatus;

/* The caller's statement with its bound arguments. */
typedef struct IdemStatement
{
	text	   *sql;
	int			nargs;
	Oid		   *types;
	Datum	   *values;
	char	   *nulls;			/* SPI convention: 'n' for NULL, ' ' otherwise */
	uint64		plan_hash;		/* set by statement_check() */
	struct PlanEntry *cached;	/* set by statement_check(): its plan cache
								 * entry, NULL if it is planned per call */
} IdemStatement;

/* One call: what the caller asked for. */
typedef struct IdemRequest
{
	text	   *scope;			/* checked by idem_current_scope() */
	text	   *key;
	IdemPolicy	policy;
	bool		has_version;
	int64		version;
	IdemStatement *stmt;		/* NULL for idem_claim */
	int64		fingerprint;	/* request identity of stmt (by value);
								 * meaningless when stmt is NULL */
} IdemRequest;

/* One call: what happened (the SQL type idem_outcome). */
typedef struct IdemOutcome
{
	IdemStatus	status;
	bool		has_version;
	int64		version;
	bool		has_previous;
	int64		previous_version;
	bool		has_rows;
	int64		rows;
	Jsonb	   *result;			/* NULL when none */
} IdemOutcome;

/* settings (idempotent.*), settings.c */
extern bool idem_wait;
extern bool idem_check_fingerprint;
extern int	idem_max_key_bytes;
extern int	idem_max_result_bytes;
extern int	idem_ttl;
extern char *idem_scope;
extern int	idem_lease_ms;
extern int	idem_max_attempts;
extern void idem_define_settings(void);

/* policy.c */
extern IdemPolicy idem_parse_policy(const char *name);
extern const char *idem_policy_name(IdemPolicy policy);
extern bool idem_policy_takes_version(IdemPolicy policy);
extern int	idem_policy_index(IdemPolicy policy);
extern IdemPolicy idem_policy_at(int index);
extern IdemStatus idem_policy_decide(IdemPolicy policy, bool found, int64 stored,
									 int64 version);
extern const char *idem_status_name(IdemStatus status);
extern const char *idem_state_name(char state);

#define IDEM_NPOLICIES 5

/* apply.c */
extern void idem_execute(const IdemRequest *req, IdemOutcome *out);
extern bool idem_key_is_applying(text *scope, text *key);
extern void idem_check_not_applying(text *scope, text *key);
extern void idem_check_writable(text *key);
extern bool idem_text_equal(text *a, text *b);

/* scope.c */
extern text *idem_current_scope(void);

/* idempotent.c */
extern text *idem_key_arg(FunctionCallInfo fcinfo);
extern TupleDesc idem_result_desc(FunctionCallInfo fcinfo);
extern void idem_check_key(text *key);
extern void idem_check_version(IdemPolicy policy, bool has_version, int64 version);

#endif							/* IDEMPOTENT_H */

/*
 * settings.c
 *	  Every setting of the extension (idempotent.*): its variable, default,
 *	  limits and context.  A new setting is added here and declared in
 *	  idempotent.h (or worker.h for the purge worker's).
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"
#include "utils/memutils.h"

#include "idempotent.h"
#include "worker.h"

/* Largest key a btree entry holds comfortably, with room to spare. */
#define MAX_KEY_BYTES_LIMIT 2000

bool		idem_wait = true;
bool		idem_check_fingerprint = true;
int			idem_max_key_bytes = 512;
int			idem_max_result_bytes = 65536;
int			idem_ttl = 0;
char	   *idem_scope = NULL;
int			idem_lease_ms = 30000;
int			idem_max_attempts = 0;

/* Define the settings; called once from _PG_init. */
void
idem_define_settings(void)
{
	DefineCustomBoolVariable("idempotent.wait",
							 "Wait for another transaction that is applying the same key.",
							 "When off, a call on a key that another transaction is applying returns status in_progress at once.",
							 &idem_wait, true, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("idempotent.check_fingerprint",
							 "Check that a duplicate repeats the original statement and arguments.",
							 "When off, a duplicate whose request differs is reported as a duplicate, without the original's rows and result.",
							 &idem_check_fingerprint, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.max_key_bytes",
							"Longest key accepted, in bytes.",
							NULL,
							&idem_max_key_bytes, 512, 1, MAX_KEY_BYTES_LIMIT,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.max_result_bytes",
							"Largest statement result stored in the ledger, in bytes of jsonb.",
							NULL,
							&idem_max_result_bytes, 65536, 0, MaxAllocSize / 4,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.ttl",
							"How long a key is remembered after its transaction commits; 0 keeps it forever.",
							"An expired key counts as absent for every policy, whether or not it was purged yet.",
							&idem_ttl, 0, 0, INT_MAX,
							PGC_USERSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomStringVariable("idempotent.scope",
							   "Scope in which keys are recorded and looked up: a role name, or empty for the shared scope.",
							   "Only a role with the privileges of the scope's role may use it.",
							   &idem_scope, "", PGC_USERSET, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.lease",
							"How long idem_begin holds a key when it is given no lease.",
							"An attempt that neither completes nor fails within its lease is taken over by the next idem_begin.",
							&idem_lease_ms, 30000, 1, INT_MAX,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.max_attempts",
							"Failures after which a key is dead; 0 never makes a key dead.",
							"A dead key runs nothing until idem_forget or idem_reset brings it back.",
							&idem_max_attempts, 0, 0, INT_MAX,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.purge_interval",
							"Time between the purge worker's rounds over all databases; 0 stops it.",
							"Only with the library in shared_preload_libraries.",
							&idem_purge_interval, 60, 0, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("idempotent.purge_batch",
							"Expired keys the purge worker deletes per transaction.",
							"Small batches keep the waits of calls on keys being purged short.",
							&idem_purge_batch, 1000, 1, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("idempotent");
}

/*
 * policy.c
 *	  The policies and statuses of the extension, described once: a policy's
 *	  letter in the ledger, its name, whether it takes a version, and how it
 *	  decides a call against the stored version.  Parsing, names, decisions,
 *	  statistics and idem_get all read this table; a new policy is added here
 *	  (and to IdemPolicy in idempotent.h).  The names of statuses and of the
 *	  ledger's key states are here too.
 */
#include "postgres.h"

#include "idempotent.h"

/* How a policy decides a call with version v when the key holds version s. */
typedef IdemStatus (*DecideFn) (int64 v, int64 s);

typedef struct PolicyDef
{
	IdemPolicy	letter;
	const char *name;
	bool		takes_version;	/* once takes none; the others need one */
	bool		new_needs_one;	/* a new key applies only at version 1 (next) */
	DecideFn	decide;			/* outcome for a recorded key */
	bool		lease;			/* keys of idem_begin: not a policy to name
								 * in idem_claim or idem_reset, decided in
								 * lease.c */
} PolicyDef;

static IdemStatus
decide_once(int64 v, int64 s)
{
	return IDEM_DUPLICATE;
}

static IdemStatus
decide_newer(int64 v, int64 s)
{
	return v > s ? IDEM_APPLIED : v == s ? IDEM_DUPLICATE : IDEM_STALE;
}

static IdemStatus
decide_next(int64 v, int64 s)
{
	return v == s + 1 ? IDEM_APPLIED : v == s ? IDEM_DUPLICATE :
		v < s ? IDEM_STALE : IDEM_GAP;
}

static IdemStatus
decide_upsert(int64 v, int64 s)
{
	return v >= s ? IDEM_APPLIED : IDEM_STALE;
}

static const PolicyDef policies[IDEM_NPOLICIES] = {
	{IDEM_ONCE, "once", false, false, decide_once, false},
	{IDEM_NEWER, "newer", true, false, decide_newer, false},
	{IDEM_NEXT, "next", true, true, decide_next, false},
	{IDEM_UPSERT, "upsert", true, false, decide_upsert, false},
	{IDEM_LEASE, "lease", false, false, NULL, true},
};

static const char *const status_names[IDEM_NSTATUSES] = {
	[IDEM_APPLIED] = "applied",
	[IDEM_DUPLICATE] = "duplicate",
	[IDEM_STALE] = "stale",
	[IDEM_GAP] = "gap",
	[IDEM_IN_PROGRESS] = "in_progress",
	[IDEM_DEAD] = "dead",
	[IDEM_STARTED] = "started",
	[IDEM_FAILED] = "failed",
	[IDEM_COMPLETED] = "completed",
};

/* Position of a policy in the table (statistics rows follow it). */
int
idem_policy_index(IdemPolicy policy)
{
	for (int i = 0; i < IDEM_NPOLICIES; i++)
		if (policies[i].letter == policy)
			return i;
	elog(ERROR, "unknown policy letter \"%c\"", (char) policy);
	return 0;
}

/* The policy at a position of the table, for those who list them all. */
IdemPolicy
idem_policy_at(int index)
{
	Assert(index >= 0 && index < IDEM_NPOLICIES);
	return policies[index].letter;
}

const char *
idem_policy_name(IdemPolicy policy)
{
	return policies[idem_policy_index(policy)].name;
}

bool
idem_policy_takes_version(IdemPolicy policy)
{
	return policies[idem_policy_index(policy)].takes_version;
}

IdemPolicy
idem_parse_policy(const char *name)
{
	for (int i = 0; i < IDEM_NPOLICIES; i++)
		if (strcmp(name, policies[i].name) == 0)
		{
			if (policies[i].lease)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("policy \"%s\" cannot be named here", name),
						 errhint("Keys of policy \"%s\" are held through idem_begin, idem_complete and idem_fail.",
								 name)));
			return policies[i].letter;
		}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown policy \"%s\"", name),
			 errhint("The policies are once, newer, next and upsert.")));
	pg_unreachable();
}

/* Outcome of a call with version v; found says whether s is a stored version. */
IdemStatus
idem_policy_decide(IdemPolicy policy, bool found, int64 stored, int64 version)
{
	const PolicyDef *def = &policies[idem_policy_index(policy)];

	if (def->lease)
		elog(ERROR, "policy \"%s\" is decided by its own functions", def->name);
	if (!found)
		return def->new_needs_one && version != 1 ? IDEM_GAP : IDEM_APPLIED;
	return def->decide(version, stored);
}

const char *
idem_status_name(IdemStatus status)
{
	return status_names[status];
}

/* The name of a key state in the ledger; NULL for an ordinary key. */
const char *
idem_state_name(char state)
{
	switch (state)
	{
		case IDEM_STATE_NONE:
			return NULL;
		case IDEM_STATE_LEASED:
			return "leased";
		case IDEM_STATE_COMPLETED:
			return "completed";
		case IDEM_STATE_FAILED:
			return "failed";
		case IDEM_STATE_DEAD:
			return "dead";
	}
	elog(ERROR, "unknown key state \"%c\"", state);
	return NULL;
}

/*
 * key_locks.c
 *	  The writers' lock of a key, and the count of its releases in shared
 *	  memory that lets a writer trust the probe it made before locking.
 *
 * Writers of a key serialize on a heavyweight lock of their own (an advisory
 * lock tag of class IDEM_KEY_LOCK_CLASS), taken once a probe has decided to
 * write and released as soon as the row is written, not at commit (see
 * ledger.c).  Another writer may have written the key between that probe and
 * the lock, so the probe must be repeated under the lock, unless nobody can
 * have written the key in between.
 *
 * That is what the counts tell, when the library is preloaded: each release of
 * a key's lock adds one to a counter in shared memory, one of
 * KEY_RELEASE_SLOTS chosen by the key's hash.  Whatever inserts or replaces a
 * key's row does so under the key's lock, and the release that counts it comes
 * after the write (ledger.c's restamp at commit included).  Only purges write
 * without it, and they only delete expired rows, which a probe takes for
 * absent keys anyway; a superuser's DELETE or UPDATE of the ledger by hand is
 * coped with by ledger_update(), as it always was.  A writer reads its key's
 * counter before it probes and again once it holds the lock: if the count is
 * the same, no holder of a lock of that slot let go of it in between, so no
 * write of the key can have become visible after the probe began, and what the
 * probe found still holds.  (procarray.c reuses snapshots on the same
 * reasoning with xactCompletionCount.)  Keys that share a slot only cost each
 * other a second probe.  A lock released by an abort is not counted, and need
 * not be: what its holder wrote is rolled back.  A writer that trusts its
 * probe after waiting for the lock has not looked at the clock meanwhile
 * either: what it decides by the time (a lease) is decided again.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "key_locks.h"

/* field4 of the advisory lock tags we use for keys (user locks use 1 and 2) */
#define IDEM_KEY_LOCK_CLASS		0x1DE

/* counters of releases; a power of two */
#define KEY_RELEASE_SLOTS		4096

/* In shared memory when the library is preloaded; NULL otherwise. */
static pg_atomic_uint64 *key_releases = NULL;
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
key_locks_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(KEY_RELEASE_SLOTS * sizeof(pg_atomic_uint64)));
}

static void
key_locks_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	key_releases = ShmemInitStruct("idempotent key lock releases",
								   KEY_RELEASE_SLOTS * sizeof(pg_atomic_uint64), &found);
	if (!found)
		for (int i = 0; i < KEY_RELEASE_SLOTS; i++)
			pg_atomic_init_u64(&key_releases[i], 0);
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init while shared_preload_libraries is processed. */
void
idem_key_locks_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = key_locks_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = key_locks_shmem_startup;
}

/* The hash of (scope, key); the shared scope's keys hash as in 1.1 (lock tags too). */
uint64
idem_key_hash(text *scope, text *key)
{
	uint64		hash = hash_bytes_extended((const unsigned char *) VARDATA_ANY(key),
										   VARSIZE_ANY_EXHDR(key), 0);

	if (VARSIZE_ANY_EXHDR(scope) > 0)
		hash = hash_combine64(hash,
							  hash_bytes_extended((const unsigned char *) VARDATA_ANY(scope),
												  VARSIZE_ANY_EXHDR(scope), 0));
	return hash;
}

/* The lock tag of a key's hash: an advisory tag of our own class, per database. */
static void
key_locktag(LOCKTAG *tag, uint64 hash)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (hash >> 32),
						 (uint32) hash, IDEM_KEY_LOCK_CLASS);
}

/* The counter of the releases of a key's lock, and of the others in its slot. */
static inline pg_atomic_uint64 *
release_counter(uint64 hash)
{
	return &key_releases[hash & (KEY_RELEASE_SLOTS - 1)];
}

/* Take the writers' lock on a key, by its hash; false if busy and we may not wait. */
bool
idem_key_lock_hash(uint64 hash, bool wait)
{
	LOCKTAG		tag;

	key_locktag(&tag, hash);
	return LockAcquire(&tag, ExclusiveLock, false, !wait) != LOCKACQUIRE_NOT_AVAIL;
}

bool
idem_key_lock(text *scope, text *key, bool wait)
{
	return idem_key_lock_hash(idem_key_hash(scope, key), wait);
}

/* Let go of a key's writers' lock, counting the release. */
void
idem_key_unlock(text *scope, text *key)
{
	uint64		hash = idem_key_hash(scope, key);
	LOCKTAG		tag;

	/* counted before the lock is free: a writer that locks next sees it */
	if (key_releases != NULL)
		pg_atomic_fetch_add_u64(release_counter(hash), 1);
	key_locktag(&tag, hash);
	LockRelease(&tag, ExclusiveLock, false);
}

/* Whether releases are counted: the library is preloaded. */
bool
idem_key_releases_counted(void)
{
	return key_releases != NULL;
}

/*
 * How often the writers' locks of the slot of the key's hash were released
 * so far; false if they are not counted (the library is not preloaded).
 * Read after whatever came before (taking the lock) and before whatever
 * comes after (the probe's reads of the index).
 */
bool
idem_key_releases(uint64 hash, uint64 *releases)
{
	if (key_releases == NULL)
		return false;
	pg_read_barrier();
	*releases = pg_atomic_read_u64(release_counter(hash));
	pg_read_barrier();
	return true;
}

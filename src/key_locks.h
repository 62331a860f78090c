/*
 * key_locks.h
 *	  The writers' lock of a key, and the count of its releases (key_locks.c).
 */
#ifndef IDEM_KEY_LOCKS_H
#define IDEM_KEY_LOCKS_H

extern void idem_key_locks_init(void);
extern uint64 idem_key_hash(text *scope, text *key);
extern bool idem_key_lock(text *scope, text *key, bool wait);
extern bool idem_key_lock_hash(uint64 hash, bool wait);
extern void idem_key_unlock(text *scope, text *key);
extern bool idem_key_releases_counted(void);
extern bool idem_key_releases(uint64 hash, uint64 *releases);

#endif							/* IDEM_KEY_LOCKS_H */

/*
 * stats.h
 *	  Call statistics in shared memory, when the library is preloaded.
 */
#ifndef IDEM_STATS_H
#define IDEM_STATS_H

#include "portability/instr_time.h"

#include "idempotent.h"

extern bool idem_stats_enabled;

extern void idem_stats_init(void);
extern void idem_stats_count(text *scope, IdemPolicy policy, IdemStatus status,
							 instr_time elapsed);
extern void idem_stats_count_error(text *scope, IdemPolicy policy, instr_time elapsed);
extern instr_time idem_stats_run(text *scope, IdemPolicy policy, void (*fn) (void *),
								 void *arg);

#endif							/* IDEM_STATS_H */

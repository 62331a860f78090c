/*
 * worker.h
 *	  The purge worker, started when the library is preloaded.
 */
#ifndef IDEM_WORKER_H
#define IDEM_WORKER_H

extern int	idem_purge_interval;
extern int	idem_purge_batch;

extern void idem_register_purge_launcher(void);

#endif							/* IDEM_WORKER_H */

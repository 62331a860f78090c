/*
 * statement.h
 *	  The caller's statement: cached plans, execution, result, request identity.
 */
#ifndef IDEM_STATEMENT_H
#define IDEM_STATEMENT_H

#include "idempotent.h"

extern void statement_check(IdemStatement *stmt);
extern void statement_run(const IdemStatement *stmt, int64 *rows, Jsonb **result);
extern int64 statement_fingerprint(const IdemStatement *stmt);
extern int64 statement_legacy_fingerprint(const IdemStatement *stmt);

#endif							/* IDEM_STATEMENT_H */

/*
 * scope.c
 *	  Scopes: keys live in scopes, and the same key in two scopes is two
 *	  keys.  A scope is named by idempotent.scope after a role; only a role
 *	  that has the privileges of that role may record, read, forget, reset or
 *	  purge keys in it.  The empty scope is the shared one, open to every role
 *	  allowed to execute the functions, and holds the keys of versions before
 *	  1.2.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "idempotent.h"

/*
 * The scope of this call, as text for the ledger's scope column, after
 * checking that the current role may use it.  Role membership is cached by
 * the backend, so the check costs a hash lookup; the shared scope costs
 * nothing.  Allocated in the current memory context.
 */
text *
idem_current_scope(void)
{
	const char *name = idem_scope != NULL ? idem_scope : "";
	Oid			role;

	if (name[0] != '\0')
	{
		role = get_role_oid(name, true);
		if (!OidIsValid(role))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("scope \"%s\" does not name a role", name),
					 errhint("Set idempotent.scope to the name of a role whose privileges the caller has, or to '' for the shared scope.")));
		if (!has_privs_of_role(GetUserId(), role))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for scope \"%s\"", name),
					 errdetail("Keys of scope \"%s\" may be used only by roles that have the privileges of role \"%s\".",
							   name, name),
					 errhint("GRANT %s TO the calling role, or use another scope.",
							 quote_identifier(name))));
	}
	return cstring_to_text(name);
}

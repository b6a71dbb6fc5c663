/*
 * A simple service provider (the seed's "Simple Service Example"): registers
 * SERVICE, answers every request with "echo: " + the request from its data
 * callback, and logs registrations. Usage: provider [SERVICE [REQUESTS]]
 * (REQUESTS > 0: exit after serving that many; 0: until SIGTERM/SIGINT).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ds.h"

typedef struct {
	ds_hdl_t	hdl;		/* current handle, DS_INVALID_HDL when none */
	volatile unsigned served;
} provider_state_t;

static volatile sig_atomic_t stopping;

static void
on_signal(int sig)
{
	(void) sig;
	stopping = 1;
}

static void
reg_cb(ds_hdl_t hdl, ds_cb_arg_t arg, ds_ver_t *ver, ds_domain_hdl_t dhdl)
{
	provider_state_t *state = arg;
	char name[64];

	state->hdl = hdl;
	if (ds_dom_hdl_to_name(dhdl, name, sizeof (name)) != 0)
		(void) strcpy(name, "?");
	(void) printf("registered: handle 0x%llx version %u.%u domain %s (0x%llx)\n",
	    (unsigned long long)hdl, ver->major, ver->minor, name,
	    (unsigned long long)dhdl);
	(void) fflush(stdout);
}

static void
unreg_cb(ds_hdl_t hdl, ds_cb_arg_t arg)
{
	provider_state_t *state = arg;

	if (state->hdl == hdl)
		state->hdl = DS_INVALID_HDL;
	(void) printf("unregistered: handle 0x%llx\n", (unsigned long long)hdl);
	(void) fflush(stdout);
}

static void
data_cb(ds_hdl_t hdl, ds_cb_arg_t arg, void *buf, size_t buflen)
{
	provider_state_t *state = arg;
	static const char prefix[] = "echo: ";
	char *reply = malloc(sizeof (prefix) - 1 + buflen);
	int rc;

	if (reply == NULL)
		return;
	(void) memcpy(reply, prefix, sizeof (prefix) - 1);
	(void) memcpy(reply + sizeof (prefix) - 1, buf, buflen);
	rc = ds_send_msg(hdl, reply, sizeof (prefix) - 1 + buflen);
	if (rc != 0)
		(void) fprintf(stderr, "ds_send_msg: %s\n", strerror(rc));
	free(reply);
	state->served++;
}

int
main(int argc, char **argv)
{
	char *service = argc > 1 ? argv[1] : "example-echo";
	unsigned limit = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
	ds_ver_t vers[] = { { 1, 0 } };
	ds_capability_t cap = { service, vers, 1 };
	provider_state_t state = { DS_INVALID_HDL, 0 };
	ds_ops_t ops = { reg_cb, unreg_cb, data_cb, &state };
	int rc;

	(void) signal(SIGTERM, on_signal);
	(void) signal(SIGINT, on_signal);
	if ((rc = ds_svc_reg(&cap, &ops)) != 0) {
		(void) fprintf(stderr, "ds_svc_reg(%s): %s\n", service, strerror(rc));
		return (1);
	}
	(void) printf("providing %s\n", service);
	(void) fflush(stdout);
	while (!stopping && (limit == 0 || state.served < limit))
		(void) usleep(10000);
	ds_unreg_svc(service, B_FALSE);
	ds_fini();
	(void) printf("served %u requests\n", state.served);
	return (0);
}

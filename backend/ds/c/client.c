/*
 * A simple client (the seed's "Client Example"): no callbacks; polls with
 * ds_hdl_lookup + ds_isready until a provider is connected, sends one
 * request and reads the reply with ds_recv_msg, first into a buffer that is
 * too small (EFBIG tells the size), then into one that fits.
 * Usage: client [SERVICE [REQUEST]]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "ds.h"

int
main(int argc, char **argv)
{
	char *service = argc > 1 ? argv[1] : "example-echo";
	char *request = argc > 2 ? argv[2] : "hello";
	ds_ver_t vers[] = { { 1, 0 } };
	ds_capability_t cap = { service, vers, 1 };
	ds_ops_t ops = { NULL, NULL, NULL, NULL };
	ds_hdl_t hdl = DS_INVALID_HDL;
	ds_domain_hdl_t dhdl;
	boolean_t ready = B_FALSE;
	uint_t nhdls = 0;
	char small[4], name[64], *reply;
	size_t len = 0;
	int rc, tries;

	if ((rc = ds_clnt_reg(&cap, &ops)) != 0) {
		(void) fprintf(stderr, "ds_clnt_reg(%s): %s\n", service, strerror(rc));
		return (1);
	}
	for (tries = 0; tries < 1000 && !ready; tries++) {
		if (ds_hdl_lookup(service, B_TRUE, &hdl, 1, &nhdls) == 0 && nhdls == 1 &&
		    ds_isready(hdl, &ready) == 0 && ready)
			break;
		ready = B_FALSE;	/* not yet, or the handle went stale: look up again */
		(void) usleep(10000);
	}
	if (!ready) {
		(void) fprintf(stderr, "no provider of %s\n", service);
		return (1);
	}
	if (ds_domain_lookup(hdl, &dhdl) != 0 || ds_dom_hdl_to_name(dhdl, name, sizeof (name)) != 0)
		(void) strcpy(name, "?");
	(void) printf("connected: handle 0x%llx to domain %s\n", (unsigned long long)hdl, name);
	if ((rc = ds_send_msg(hdl, request, strlen(request))) != 0) {
		(void) fprintf(stderr, "ds_send_msg: %s\n", strerror(rc));
		return (1);
	}
	rc = ds_recv_msg(hdl, small, sizeof (small), &len);
	if (rc == EFBIG) {
		(void) printf("EFBIG: reply is %zu bytes\n", len);
		if ((reply = malloc(len + 1)) == NULL)
			return (1);
		rc = ds_recv_msg(hdl, reply, len, &len);
	} else {
		reply = malloc(sizeof (small) + 1);
		if (reply != NULL)
			(void) memcpy(reply, small, len);
	}
	if (rc != 0 || reply == NULL) {
		(void) fprintf(stderr, "ds_recv_msg: %s\n", strerror(rc));
		return (1);
	}
	reply[len] = '\0';
	(void) printf("reply: %s\n", reply);
	free(reply);
	ds_unreg_svc(service, B_TRUE);
	ds_fini();
	return (0);
}

/*
 * Benchmark client: COUNT request/response round trips on SERVICE with
 * WINDOW requests outstanding; prints the rate and the process's CPU time
 * over the round trips. Usage: bench_client SERVICE COUNT WINDOW
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "ds.h"

int
main(int argc, char **argv)
{
	ds_ver_t vers[] = { { 1, 0 } };
	ds_capability_t cap;
	ds_ops_t ops = { NULL, NULL, NULL, NULL };
	ds_hdl_t hdl = DS_INVALID_HDL;
	boolean_t ready = B_FALSE;
	uint_t nhdls = 0;
	char request[16], reply[64];
	size_t len;
	struct timespec t0, t1, c0, c1;
	long count, window, i;
	double elapsed;

	if (argc != 4)
		return (2);
	count = atol(argv[2]);
	window = atol(argv[3]);
	cap.svc_id = argv[1];
	cap.vers = vers;
	cap.nvers = 1;
	(void) memset(request, 'r', sizeof (request));
	if (ds_clnt_reg(&cap, &ops) != 0)
		return (1);
	for (i = 0; i < 1000 && !ready; i++) {
		if (ds_hdl_lookup(argv[1], B_TRUE, &hdl, 1, &nhdls) != 0 || nhdls != 1 ||
		    ds_isready(hdl, &ready) != 0)
			ready = B_FALSE;
		if (!ready)
			(void) usleep(10000);
	}
	if (!ready)
		return (1);
	(void) clock_gettime(CLOCK_MONOTONIC, &t0);
	(void) clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
	for (i = 0; i < window && i < count; i++)
		if (ds_send_msg(hdl, request, sizeof (request)) != 0)
			return (1);
	for (i = 0; i < count; i++) {
		if (ds_recv_msg(hdl, reply, sizeof (reply), &len) != 0 ||
		    len != sizeof (request))
			return (1);
		if (i + window < count && ds_send_msg(hdl, request, sizeof (request)) != 0)
			return (1);
	}
	(void) clock_gettime(CLOCK_MONOTONIC, &t1);
	(void) clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
	elapsed = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	(void) printf("%ld round trips in %.3f s: %.0f rt/s, %.6f s CPU\n", count, elapsed,
	    count / elapsed, (c1.tv_sec - c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) / 1e9);
	ds_fini();
	return (0);
}

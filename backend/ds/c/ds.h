/*
 * ds.h - the user-level Domain Services library (libds), as the LDoms Domain
 * Services API document (rev 1.8) and illumos's libds.h define it.
 * Implemented by libds.so (built from backend/ds with cffi embedding), which
 * talks to this domain's DS agent at $VIO_DS_SOCKET.
 */
#ifndef _DS_H
#define _DS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef _BOOLEAN_T_DEFINED
#define _BOOLEAN_T_DEFINED
typedef enum { B_FALSE = 0, B_TRUE = 1 } boolean_t;
#endif
typedef unsigned int uint_t;

typedef uint64_t ds_hdl_t;		/* service handle (opaque) */
typedef uint64_t ds_domain_hdl_t;	/* domain handle */
typedef void *ds_cb_arg_t;		/* handed back to every callback */

#define DS_INVALID_HDL	(0)		/* no valid handle is ever 0 */

typedef struct ds_ver {
	uint16_t	major;
	uint16_t	minor;
} ds_ver_t;

typedef struct ds_capability {
	char		*svc_id;	/* service identifier */
	ds_ver_t	*vers;		/* supported versions, highest first */
	uint_t		nvers;		/* number of versions (1..20) */
} ds_capability_t;

typedef struct ds_ops {
	void (*ds_reg_cb)(ds_hdl_t hdl, ds_cb_arg_t arg, ds_ver_t *ver,
	    ds_domain_hdl_t dhdl);
	void (*ds_unreg_cb)(ds_hdl_t hdl, ds_cb_arg_t arg);
	void (*ds_data_cb)(ds_hdl_t hdl, ds_cb_arg_t arg, void *buf,
	    size_t buflen);
	ds_cb_arg_t cb_arg;
} ds_ops_t;

extern int ds_init(void);
extern void ds_fini(void);
extern int ds_svc_reg(ds_capability_t *cap, ds_ops_t *ops);
extern int ds_clnt_reg(ds_capability_t *cap, ds_ops_t *ops);
extern int ds_unreg_hdl(ds_hdl_t hdl);
extern void ds_unreg_svc(char *service, boolean_t is_client);
extern int ds_hdl_lookup(char *service, boolean_t is_client, ds_hdl_t *hdlp,
    uint_t maxhdls, uint_t *nhdlsp);
extern int ds_domain_lookup(ds_hdl_t hdl, ds_domain_hdl_t *dhdlp);
extern int ds_isready(ds_hdl_t hdl, boolean_t *is_ready);
extern int ds_send_msg(ds_hdl_t hdl, void *buf, size_t buflen);
extern int ds_recv_msg(ds_hdl_t hdl, void *buf, size_t buflen,
    size_t *msglenp);
extern int ds_dom_hdl_to_name(ds_domain_hdl_t dhdl, char *domain_name,
    uint_t maxnamlen);
extern int ds_dom_name_to_hdl(char *domain_name, ds_domain_hdl_t *dhdlp);
extern int ds_dom_name_to_handle(char *domain_name, ds_domain_hdl_t *dhdlp);

#ifdef __cplusplus
}
#endif

#endif /* _DS_H */

// libnl-3 (Debian libnl-3-dev): the socket and message layer the Netlink module wraps, and the
// kernel's netlink headers. Nothing else in the project includes libnl. The messages themselves
// are built with the kernel's constants, so no libnl-route-3 object is used (nm: no rtnl_*).
#ifndef SWIFT_CNI_CNETLINK_SHIM_H
#define SWIFT_CNI_CNETLINK_SHIM_H

#include <netlink/netlink.h>
#include <netlink/msg.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/if_bridge.h>
#include <linux/rtnetlink.h>
#include <linux/neighbour.h>
#include <linux/veth.h>
#include <linux/nsfs.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netfilter/nf_tables_compat.h>
#include <sys/ioctl.h>
#include <sys/statfs.h>

// ioctl(2) is variadic, which Swift cannot call: the namespace type of an nsfs file
// (CLONE_NEWNET for a network namespace), or -1 with errno (ENOTTY: not a namespace file).
static inline int cni_namespace_type(int fd) { return ioctl(fd, NS_GET_NSTYPE); }

#endif

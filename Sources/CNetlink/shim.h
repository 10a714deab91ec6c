// The C side of swift-cni: libnl-3 / libnl-route-3 (Debian libnl-3-dev, libnl-route-3-dev)
// and the few declarations that Swift's Glibc module does not give us.
#ifndef SWIFT_CNI_CNETLINK_SHIM_H
#define SWIFT_CNI_CNETLINK_SHIM_H

// Glibc only declares setns(2) and the CLONE_* flags under _GNU_SOURCE, which Swift's
// Glibc module is not built with; declare them here so Namespace can call setns directly.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <sys/file.h>

extern int setns(int fd, int nstype);
#ifndef CLONE_NEWNET
#define CLONE_NEWNET 0x40000000
#endif
static const int cni_clone_newnet = CLONE_NEWNET;

#include <netlink/netlink.h>
#include <netlink/msg.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/link/bridge.h>
#include <netlink/route/addr.h>
#include <netlink/route/route.h>
#include <netlink/route/nexthop.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/if_bridge.h>
#include <linux/rtnetlink.h>
#include <linux/neighbour.h>

#endif

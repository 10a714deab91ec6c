// libnl-3 / libnl-route-3 (Debian libnl-3-dev, libnl-route-3-dev): the headers the Netlink
// module wraps. Nothing else in the project includes libnl.
#ifndef SWIFT_CNI_CNETLINK_SHIM_H
#define SWIFT_CNI_CNETLINK_SHIM_H

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

/*
 * floor: the kernel work of one bridge + host-local ADD (or DEL), done by the smallest program we
 * could write, so the benchmark shows how far each plugin is from what the kernel itself costs.
 *
 *   floor add <netns> <ifname> <host-veth> <bridge> <address/prefix> <gateway> <lease-file> <id>
 *   floor del <netns> <ifname> <lease-file>
 *   floor noop                      (exits at once: the benchmark's own spawn-and-wait cost)
 *   floor peak-rss <out-file> <program> [args...]
 *
 * peak-rss runs a program and writes its ru_maxrss (KiB; the peak over it and the children it
 * waited for) to <out-file>, then exits with the program's status. It exists because a child's
 * ru_maxrss starts at the RSS of the process it was forked (or vforked) from: measured straight
 * from Python it would never read below Python's own ~18 MiB. Forked from this small static
 * program, the floor under the measurement is this program's few hundred KiB.
 *
 * ADD: one RTM_NEWLINK creates the veth with its host end already on the bridge and up and its
 * peer directly in the container namespace; then, inside the namespace, the address, link up and
 * the default route; plus the lease file host-local would write (O_EXCL create, `<id>\r\n<ifname>`).
 * DEL: delete the container interface (the kernel removes the peer) and unlink the lease.
 * Raw rtnetlink, no library, statically linked: nothing here is optional work.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

struct request {
    struct nlmsghdr header;
    char payload[1024];
};

static void die(const char *what, int error) {
    fprintf(stderr, "floor: %s: %s\n", what, strerror(error));
    exit(1);
}

static struct rtattr *attribute(struct nlmsghdr *header, unsigned short type, const void *data, size_t length) {
    struct rtattr *rta = (struct rtattr *)((char *)header + NLMSG_ALIGN(header->nlmsg_len));
    rta->rta_type = type;
    rta->rta_len = RTA_LENGTH(length);
    if (length) memcpy(RTA_DATA(rta), data, length);
    header->nlmsg_len = NLMSG_ALIGN(header->nlmsg_len) + RTA_ALIGN(rta->rta_len);
    return rta;
}

/* Nested attributes: open, then close once the children are appended. */
static struct rtattr *nest(struct nlmsghdr *header, unsigned short type) { return attribute(header, type, NULL, 0); }
static void end_nest(struct nlmsghdr *header, struct rtattr *nested) {
    nested->rta_len = (unsigned short)((char *)header + header->nlmsg_len - (char *)nested);
}

static int open_socket(void) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) die("socket", errno);
    return fd;
}

/* Sends one request and waits for its acknowledgement. */
static void transact(int fd, struct nlmsghdr *header, const char *what) {
    static unsigned sequence;
    header->nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
    header->nlmsg_seq = ++sequence;
    if (send(fd, header, header->nlmsg_len, 0) < 0) die(what, errno);
    char reply[4096];
    ssize_t length = recv(fd, reply, sizeof reply, 0);
    if (length < 0) die(what, errno);
    struct nlmsghdr *answer = (struct nlmsghdr *)reply;
    if (answer->nlmsg_type == NLMSG_ERROR) {
        int error = ((struct nlmsgerr *)NLMSG_DATA(answer))->error;
        if (error) die(what, -error);
    }
}

static void start(struct request *request, unsigned short type, unsigned short flags, size_t body) {
    memset(request, 0, sizeof *request);
    request->header.nlmsg_type = type;
    request->header.nlmsg_flags = flags;
    request->header.nlmsg_len = NLMSG_LENGTH(body);
}

static int enter(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(path, errno);
    return fd;
}

static void add(char **argv) {
    const char *netns = argv[0], *ifname = argv[1], *host_veth = argv[2], *bridge = argv[3];
    const char *lease = argv[6], *id = argv[7];
    char cidr[64];
    snprintf(cidr, sizeof cidr, "%s", argv[4]);
    char *slash = strchr(cidr, '/');
    if (!slash) die("address needs a prefix length", EINVAL);
    *slash = 0;
    unsigned char prefix = (unsigned char)atoi(slash + 1);
    struct in_addr address, gateway, broadcast;
    if (inet_pton(AF_INET, cidr, &address) != 1 || inet_pton(AF_INET, argv[5], &gateway) != 1)
        die("address", EINVAL);
    broadcast.s_addr = address.s_addr | htonl(prefix ? (0xffffffffu >> prefix) : 0xffffffffu);

    int lease_fd = open(lease, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (lease_fd < 0) die(lease, errno);
    dprintf(lease_fd, "%s\r\n%s", id, ifname);
    close(lease_fd);

    int netns_fd = enter(netns);
    unsigned master = if_nametoindex(bridge);
    if (!master) die(bridge, errno);
    int host = open_socket();
    struct request request;
    start(&request, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifinfomsg));
    struct ifinfomsg *info = NLMSG_DATA(&request.header);
    info->ifi_flags = IFF_UP;
    info->ifi_change = IFF_UP;
    attribute(&request.header, IFLA_IFNAME, host_veth, strlen(host_veth) + 1);
    attribute(&request.header, IFLA_MASTER, &master, sizeof master);
    struct rtattr *linkinfo = nest(&request.header, IFLA_LINKINFO);
    attribute(&request.header, IFLA_INFO_KIND, "veth", 4);
    struct rtattr *data = nest(&request.header, IFLA_INFO_DATA);
    struct rtattr *peer = nest(&request.header, VETH_INFO_PEER);
    struct ifinfomsg peer_info = {0};
    request.header.nlmsg_len += sizeof peer_info; /* the peer's ifinfomsg precedes its attributes */
    memcpy(RTA_DATA(peer), &peer_info, sizeof peer_info);
    attribute(&request.header, IFLA_IFNAME, ifname, strlen(ifname) + 1);
    attribute(&request.header, IFLA_NET_NS_FD, &netns_fd, sizeof netns_fd);
    end_nest(&request.header, peer);
    end_nest(&request.header, data);
    end_nest(&request.header, linkinfo);
    transact(host, &request.header, "create veth");

    if (setns(netns_fd, CLONE_NEWNET) < 0) die("setns", errno);
    int container = open_socket();
    unsigned index = if_nametoindex(ifname);
    if (!index) die(ifname, errno);

    start(&request, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct ifaddrmsg));
    struct ifaddrmsg *addr = NLMSG_DATA(&request.header);
    addr->ifa_family = AF_INET;
    addr->ifa_prefixlen = prefix;
    addr->ifa_index = index;
    attribute(&request.header, IFA_LOCAL, &address, sizeof address);
    attribute(&request.header, IFA_ADDRESS, &address, sizeof address);
    attribute(&request.header, IFA_BROADCAST, &broadcast, sizeof broadcast);
    transact(container, &request.header, "add address");

    start(&request, RTM_NEWLINK, 0, sizeof(struct ifinfomsg));
    info = NLMSG_DATA(&request.header);
    info->ifi_index = (int)index;
    info->ifi_flags = IFF_UP;
    info->ifi_change = IFF_UP;
    transact(container, &request.header, "set link up");

    start(&request, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof(struct rtmsg));
    struct rtmsg *route = NLMSG_DATA(&request.header);
    route->rtm_family = AF_INET;
    route->rtm_table = RT_TABLE_MAIN;
    route->rtm_protocol = RTPROT_BOOT;
    route->rtm_scope = RT_SCOPE_UNIVERSE;
    route->rtm_type = RTN_UNICAST;
    attribute(&request.header, RTA_GATEWAY, &gateway, sizeof gateway);
    attribute(&request.header, RTA_OIF, &index, sizeof index);
    transact(container, &request.header, "add default route");
}

static void del(char **argv) {
    const char *netns = argv[0], *ifname = argv[1], *lease = argv[2];
    int netns_fd = enter(netns);
    if (setns(netns_fd, CLONE_NEWNET) < 0) die("setns", errno);
    int container = open_socket();
    struct request request;
    start(&request, RTM_DELLINK, 0, sizeof(struct ifinfomsg));
    attribute(&request.header, IFLA_IFNAME, ifname, strlen(ifname) + 1);
    transact(container, &request.header, "delete link");
    if (unlink(lease) < 0) die(lease, errno);
}

static int peak_rss(char **argv) {
    pid_t pid = fork();
    if (pid < 0) die("fork", errno);
    if (pid == 0) {
        execv(argv[1], argv + 1);
        die(argv[1], errno);
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) die("wait4", errno);
    FILE *out = fopen(argv[0], "w");
    if (!out) die(argv[0], errno);
    fprintf(out, "%ld\n", usage.ru_maxrss);
    fclose(out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    if (argc == 10 && strcmp(argv[1], "add") == 0) add(argv + 2);
    else if (argc == 5 && strcmp(argv[1], "del") == 0) del(argv + 2);
    else if (argc >= 4 && strcmp(argv[1], "peak-rss") == 0) return peak_rss(argv + 2);
    else if (argc == 2 && strcmp(argv[1], "noop") == 0) return 0; /* measures the harness's spawn cost */
    else {
        fprintf(stderr, "usage: floor add <netns> <ifname> <host-veth> <bridge> <addr/len> <gw> <lease> <id>\n"
                        "       floor del <netns> <ifname> <lease>\n");
        return 2;
    }
    return 0;
}

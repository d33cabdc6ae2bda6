// libnl-route-3: rtnl_link / rtnl_addr / rtnl_route, used to configure TUN links.
#include <netlink/netlink.h>
#include <netlink/errno.h>
#include <netlink/route/link.h>
#include <netlink/route/addr.h>
#include <netlink/route/route.h>
#include <netlink/route/nexthop.h>
#include <netlink/route/link/inet6.h>

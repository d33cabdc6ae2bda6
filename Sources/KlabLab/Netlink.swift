import CLibnl
import Foundation
import KlabPacket

/// A NETLINK_ROUTE session through libnl-route, in the namespace of the thread that opened
/// it. Methods read like the `ip` commands they replace. Requires CAP_NET_ADMIN.
public final class Netlink: @unchecked Sendable {
    private let sock: OpaquePointer

    public init() throws {
        guard let s = nl_socket_alloc() else { throw LabError("nl_socket_alloc", errno: ENOMEM) }
        let err = nl_connect(s, NETLINK_ROUTE)
        if err < 0 {
            nl_socket_free(s)
            throw Netlink.error("nl_connect(NETLINK_ROUTE)", err)
        }
        sock = s
    }

    deinit { nl_socket_free(sock) }

    /// libnl's error codes are its own (NLE_*), so its words are the detail; NLE_PERM (the
    /// kernel's EPERM) also names the capability.
    static func error(_ call: String, _ code: Int32) -> LabError {
        LabError(call, errno: 0, detail: String(cString: nl_geterror(code)), hint: code == -NLE_PERM ? "needs CAP_NET_ADMIN" : nil)
    }

    private func check(_ call: @autoclosure () -> String, _ code: Int32) throws {
        if code < 0 { throw Netlink.error(call(), code) }
    }

    private func change(_ ifindex: Int32, _ what: String, _ edit: (OpaquePointer) -> Void) throws {
        var link: OpaquePointer?
        try check("rtnl_link_get_kernel(\(ifindex))", rtnl_link_get_kernel(sock, ifindex, nil, &link))
        defer { rtnl_link_put(link) }
        guard let delta = rtnl_link_alloc() else { throw LabError("rtnl_link_alloc", errno: ENOMEM) }
        defer { rtnl_link_put(delta) }
        edit(delta)
        try check("rtnl_link_change(\(what))", rtnl_link_change(sock, link, delta, 0))
    }

    /// ip link set dev IF addrgenmode none. Done before `up`, or the kernel sends IPv6
    /// router solicitations and MLD reports into the TUN.
    public func setAddrGenModeNone(_ ifindex: Int32) throws {
        try change(ifindex, "addrgenmode none") { delta in
            _ = rtnl_link_inet6_set_addr_gen_mode(delta, UInt8(rtnl_link_inet6_str2addrgenmode("none")))
        }
    }

    /// ip link set dev IF mtu MTU up
    public func setUp(_ ifindex: Int32, mtu: UInt32? = nil) throws {
        try change(ifindex, "up") { delta in
            if let mtu { rtnl_link_set_mtu(delta, mtu) }
            rtnl_link_set_flags(delta, UInt32(IFF_UP))
        }
    }

    /// ip -s link show dev IF: packets the device dropped on transmit (a TUN whose queue was
    /// full when the host sent: klab never read them).
    public func txDropped(_ ifindex: Int32) throws -> UInt64 {
        var link: OpaquePointer?
        try check("rtnl_link_get_kernel(\(ifindex))", rtnl_link_get_kernel(sock, ifindex, nil, &link))
        defer { rtnl_link_put(link) }
        return rtnl_link_get_stat(link, RTNL_LINK_TX_DROPPED)
    }

    /// ip addr add ADDRESS/LEN dev IF
    public func addAddress(_ ifindex: Int32, _ address: IPv4Address, prefixLength: Int) throws {
        guard let addr = rtnl_addr_alloc() else { throw LabError("rtnl_addr_alloc", errno: ENOMEM) }
        defer { rtnl_addr_put(addr) }
        var local: OpaquePointer?
        try check("nl_addr_parse(\(address))", nl_addr_parse("\(address)/\(prefixLength)", AF_INET, &local))
        defer { nl_addr_put(local) }
        rtnl_addr_set_ifindex(addr, ifindex)
        try check("rtnl_addr_set_local", rtnl_addr_set_local(addr, local))
        try check("rtnl_addr_add(\(address)/\(prefixLength))", rtnl_addr_add(sock, addr, 0))
    }

    /// ip route add PREFIX dev IF [via GATEWAY]
    public func addRoute(_ prefix: IPv4Prefix, ifindex: Int32, via gateway: IPv4Address? = nil) throws {
        guard let route = rtnl_route_alloc(), let nh = rtnl_route_nh_alloc() else {
            throw LabError("rtnl_route_alloc", errno: ENOMEM)
        }
        defer { rtnl_route_put(route) }
        var dst: OpaquePointer?
        try check("nl_addr_parse(\(prefix))", nl_addr_parse("\(prefix)", AF_INET, &dst))
        defer { nl_addr_put(dst) }
        rtnl_route_set_family(route, UInt8(AF_INET))
        try check("rtnl_route_set_dst", rtnl_route_set_dst(route, dst))
        rtnl_route_nh_set_ifindex(nh, ifindex)
        var gw: OpaquePointer?
        if let gateway {
            try check("nl_addr_parse(\(gateway))", nl_addr_parse("\(gateway)", AF_INET, &gw))
            rtnl_route_nh_set_gateway(nh, gw)
        } else {
            rtnl_route_set_scope(route, UInt8(RT_SCOPE_LINK.rawValue))
        }
        defer { if let gw { nl_addr_put(gw) } }
        rtnl_route_add_nexthop(route, nh)  // the route owns nh from here
        try check("rtnl_route_add(\(prefix))", rtnl_route_add(sock, route, NLM_F_CREATE))
    }
}

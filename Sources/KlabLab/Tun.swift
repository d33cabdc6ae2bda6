import CKlabLinux
import Foundation
import KlabPacket

/// A TUN device (IFF_TUN | IFF_NO_PI): the daemon's end of a lab link. Each write() is one
/// IPv4 packet handed to the host's stack; each read() is one packet the host sent.
/// Create it with `Host.run` so it lives in the host's namespace. Requires CAP_NET_ADMIN.
public final class TunDevice: @unchecked Sendable {
    public let name: String
    public let fd: Int32
    public private(set) var ifindex: Int32

    /// Bytes of virtio-net header before each packet: 0, or 10 with `offload`.
    public let headerLength: Int

    /// ioctl(TUNSETIFF) on /dev/net/tun, in the calling thread's namespace. With `offload`,
    /// IFF_VNET_HDR and TUNSETOFFLOAD(CSUM, TSO4, TSO6): the stack hands the TUN segments of
    /// up to 64 KB (GSO), each behind a virtio-net header, and takes them back the same way.
    public init(name: String, offload: Bool = false) throws {
        let fd = try sys("open(/dev/net/tun)", hint: "load the tun module; in a container pass --device /dev/net/tun") {
            open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        }
        var ok = false
        defer { if !ok { close(fd) } }
        var ifr = ifreq()
        withUnsafeMutableBytes(of: &ifr.ifr_ifrn.ifrn_name) { buf in
            for (i, c) in name.utf8.prefix(Int(IFNAMSIZ) - 1).enumerated() { buf[i] = c }
        }
        ifr.ifr_ifru.ifru_flags = klab_IFF_TUN | klab_IFF_NO_PI | (offload ? klab_IFF_VNET_HDR : 0)
        try sys("ioctl(TUNSETIFF, \(name))", hint: "needs CAP_NET_ADMIN") { ioctl(fd, klab_TUNSETIFF, &ifr) }
        if offload {
            let features = UInt(klab_TUN_F_CSUM | klab_TUN_F_TSO4 | klab_TUN_F_TSO6)
            try sys("ioctl(TUNSETOFFLOAD, \(name))") { klab_ioctl_int(fd, klab_TUNSETOFFLOAD, features) }
        }
        headerLength = offload ? Int(klab_VNET_HDR_LEN) : 0
        self.fd = fd
        self.name = withUnsafeBytes(of: ifr.ifr_ifrn.ifrn_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        self.ifindex = Int32(if_nametoindex(self.name))
        ok = true
    }

    deinit { close(fd) }

    /// Injects one packet into the host's stack. On a TUN without NAPI the whole receive
    /// path runs inside this call.
    @inlinable @inline(__always)
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try sys("write(\(name))") { Int32(truncatingIfNeeded: klab_write(fd, bytes.baseAddress, bytes.count)) }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Reads one packet into `buffer`; nil when nothing arrives within `timeoutMs`.
    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer, timeoutMs: Int32) throws -> Int? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = try sys("poll(\(name))") { poll(&p, 1, timeoutMs) }
        if n == 0 { return nil }
        let r = try sys("read(\(name))") { Int32(truncatingIfNeeded: klab_read(fd, buffer.baseAddress, buffer.count)) }
        return Int(r)
    }

    /// Reads one packet without polling first: the caller knows one is waiting or wants to block.
    @inlinable @inline(__always)
    public func readBlocking(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        Int(try sys("read(\(name))") { Int32(truncatingIfNeeded: klab_read(fd, buffer.baseAddress, buffer.count)) })
    }
}

extension LabHost {
    /// A link of this host: `ip link set lo up`, a TUN named `name` with addrgenmode none
    /// (before up, or IPv6 chatter appears on it), MTU, up, `address/prefixLength`, and a route
    /// to `route` through it. Runs on the host's thread; the TUN stays in its namespace.
    public func addLink(name: String, address: IPv4Address, prefixLength: Int, mtu: UInt32? = nil,
                        route: IPv4Prefix? = nil, offload: Bool = false) throws -> TunDevice {
        try run { () throws -> TunDevice in
            let nl = try Netlink()
            try nl.setUp(1)
            let tun = try TunDevice(name: name, offload: offload)
            try nl.setAddrGenModeNone(tun.ifindex)
            try nl.setUp(tun.ifindex, mtu: mtu)
            try nl.addAddress(tun.ifindex, address, prefixLength: prefixLength)
            if let route { try nl.addRoute(route, ifindex: tun.ifindex) }
            return tun
        }
    }
}

import CKlabLinux
import Foundation
import KlabPacket

/// A TUN device (IFF_TUN | IFF_NO_PI): the daemon's end of a lab link. Each write() is one
/// IPv4 packet handed to the host's stack; each read() is one packet the host sent.
/// Create it with `Host.run` so it lives in the host's namespace. Requires CAP_NET_ADMIN.
public final class TunDevice: @unchecked Sendable {
    public let name: String
    /// The first queue's descriptor: the only one unless the device has several queues.
    public var fd: Int32 { fds[0] }
    /// One descriptor per queue (IFF_MULTI_QUEUE). The kernel sends a flow's packets out of one
    /// queue, chosen by a hash of its addresses and ports that is the same both ways: on two
    /// TUNs with as many queues, a flow and its replies use the same queue index.
    public let fds: [Int32]
    public private(set) var ifindex: Int32

    /// Bytes of virtio-net header before each packet: 0, or 10 with `offload`.
    public let headerLength: Int

    /// ioctl(TUNSETIFF) on /dev/net/tun, in the calling thread's namespace. With `offload`,
    /// IFF_VNET_HDR and TUNSETOFFLOAD(CSUM, TSO4, TSO6): the stack hands the TUN segments of
    /// up to 64 KB (GSO), each behind a virtio-net header, and takes them back the same way.
    /// With `queues` > 1, IFF_MULTI_QUEUE and one descriptor per queue (TUNSETIFF on the same
    /// name once per queue).
    public init(name: String, offload: Bool = false, queues: Int = 1) throws {
        precondition(queues >= 1)
        var fds: [Int32] = []
        var ok = false
        defer { if !ok { for fd in fds { close(fd) } } }
        var devName = name
        for q in 0..<queues {
            let fd = try sys("open(/dev/net/tun)", hint: "load the tun module; in a container pass --device /dev/net/tun") {
                open("/dev/net/tun", O_RDWR | O_CLOEXEC)
            }
            fds.append(fd)
            var ifr = ifreq()
            withUnsafeMutableBytes(of: &ifr.ifr_ifrn.ifrn_name) { buf in
                for (i, c) in devName.utf8.prefix(Int(IFNAMSIZ) - 1).enumerated() { buf[i] = c }
            }
            ifr.ifr_ifru.ifru_flags = klab_IFF_TUN | klab_IFF_NO_PI | (offload ? klab_IFF_VNET_HDR : 0) | (queues > 1 ? klab_IFF_MULTI_QUEUE : 0)
            try sys("ioctl(TUNSETIFF, \(devName)\(queues > 1 ? ", queue \(q)" : ""))", hint: "needs CAP_NET_ADMIN") { ioctl(fd, klab_TUNSETIFF, &ifr) }
            devName = withUnsafeBytes(of: ifr.ifr_ifrn.ifrn_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        if offload {
            let features = UInt(klab_TUN_F_CSUM | klab_TUN_F_TSO4 | klab_TUN_F_TSO6)
            try sys("ioctl(TUNSETOFFLOAD, \(devName))") { klab_ioctl_int(fds[0], klab_TUNSETOFFLOAD, features) }
        }
        headerLength = offload ? Int(klab_VNET_HDR_LEN) : 0
        self.fds = fds
        self.name = devName
        self.ifindex = Int32(if_nametoindex(devName))
        ok = true
    }

    deinit { for fd in fds { close(fd) } }

    /// Injects one packet into the host's stack. On a TUN without NAPI the whole receive
    /// path runs inside this call.
    @inlinable @inline(__always)
    public func write(_ bytes: UnsafeRawBufferPointer, queue: Int = 0) throws {
        try sys("write(\(name))") { Int32(truncatingIfNeeded: klab_write(fds[queue], bytes.baseAddress, bytes.count)) }
    }

    public func write(_ bytes: [UInt8], queue: Int = 0) throws {
        try bytes.withUnsafeBytes { try write($0, queue: queue) }
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
                        route: IPv4Prefix? = nil, offload: Bool = false, queues: Int = 1) throws -> TunDevice {
        try run { () throws -> TunDevice in
            let nl = try Netlink()
            try nl.setUp(1)
            let tun = try TunDevice(name: name, offload: offload, queues: queues)
            try nl.setAddrGenModeNone(tun.ifindex)
            try nl.setUp(tun.ifindex, mtu: mtu)
            try nl.addAddress(tun.ifindex, address, prefixLength: prefixLength)
            if let route { try nl.addRoute(route, ifindex: tun.ifindex) }
            return tun
        }
    }
}

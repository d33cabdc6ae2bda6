import Foundation
import Glibc
import KlabLab
import KlabPacket
import Testing

/// Root and /dev/net/tun; without them the suite skips with the reason, or under CI=true runs
/// and fails on what is missing.
enum TunPrivilege {
    static var present: Bool {
        let missing = geteuid() != 0 ? "not root" : access("/dev/net/tun", R_OK | W_OK) != 0 ? "no /dev/net/tun" : nil
        guard let missing else { return true }
        if ProcessInfo.processInfo.environment["CI"] == "true" { return true }
        print("SKIP TUN queue test: \(missing) (run as root; with CI=true this fails)")
        return false
    }
}

/// The multi-queue TUN the wire's threads rely on: each of two hosts has a TUN with two queues;
/// a packet host a sends leaves a's TUN through queue k, and written into b's TUN through
/// queue k, b's reply leaves through b's queue k (the queue follows a hash of the flow that is
/// the same both ways). So one thread, reading and writing queue k of every TUN, sees both
/// directions of a flow.
@Suite(.enabled(if: TunPrivilege.present))
struct TunQueueTests {
    @Test func aFlowAndItsRepliesUseTheSameQueueOnBothHosts() throws {
        let a = try LabHost(name: "tunq-a"), b = try LabHost(name: "tunq-b")
        defer { a.shutdown(); b.shutdown() }
        let addrA = IPv4Address(198, 18, 0, 1), addrB = IPv4Address(198, 18, 0, 2)
        let tunA = try a.addLink(name: "kl-tunq-a", address: addrA, prefixLength: 24, queues: 2)
        let tunB = try b.addLink(name: "kl-tunq-b", address: addrB, prefixLength: 24, queues: 2)
        #expect(tunA.fds.count == 2 && tunB.fds.count == 2)
        var buf = [UInt8](repeating: 0, count: 2048)
        /// The first TCP segment to or from `port` that `tun` sends within 2 s, and its queue.
        func next(_ tun: TunDevice, port: UInt16) -> (queue: Int, bytes: [UInt8])? {
            let deadline = Clock.monotonicNs() + 2_000_000_000
            while Clock.monotonicNs() < deadline {
                var fds = tun.fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
                guard poll(&fds, 2, 100) > 0 else { continue }
                for (i, p) in fds.enumerated() where p.revents != 0 {
                    let n = read(p.fd, &buf, buf.count)
                    if n > 0, let q = try? Packet.parse(buf[0..<n]), case let .tcp(h) = q.transport,
                       h.sourcePort == port || h.destinationPort == port {
                        return (i, Array(buf[0..<n]))
                    }
                }
            }
            return nil
        }
        var queuesSeen = Set<Int>()
        // 16 flows: host a connects from port 40000+i to b's closed port 9, so b answers its SYN
        // with a RST. Both queues are used (a's stack spreads the flows by their hash; all 16 on
        // one queue is a 1-in-32768 chance).
        for i in 0..<16 {
            let port = UInt16(40000 + i)
            let fd = try a.run { () -> Int32 in
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                var local = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: addrA.rawValue.bigEndian), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
                var remote = local
                remote.sin_port = UInt16(9).bigEndian
                remote.sin_addr.s_addr = addrB.rawValue.bigEndian
                _ = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                _ = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                return fd
            }
            defer { close(fd) }
            guard let syn = next(tunA, port: port) else {
                Issue.record("flow \(i): no SYN from host a")
                continue
            }
            queuesSeen.insert(syn.queue)
            try tunB.write(syn.bytes, queue: syn.queue)
            let reply = next(tunB, port: port)
            #expect(reply?.queue == syn.queue, "flow \(i): SYN left a through queue \(syn.queue), b's reply left b through queue \(reply.map { String($0.queue) } ?? "none")")
        }
        #expect(queuesSeen == [0, 1], "host a's flows used queues \(queuesSeen.sorted())")
    }
}

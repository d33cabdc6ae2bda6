import CKlabLinux
import Foundation
import Glibc
import KlabLab
import KlabPacket

/// Packet events (packetdrill's run_packet.c): which socket a script packet belongs to,
/// inbound packets mapped from script to live values and injected, outbound ones sniffed,
/// mapped to script values and checked field by field.
extension PktPlayer {
    func packetEvent(_ i: Int, _ p: PktPacket) throws(PktFailure) -> String {
        let n = events[i].location.line
        func failure(_ m: String, warning: Bool = false) -> PktFailure {
            PktFailure(message: "\(file):\(n): \(warning ? "warning" : "error") handling packet: \(m)")
        }
        guard let socket = findOrCreateSocket(p) else { throw failure("no matching socket for script packet") }
        if p.direction == .outbound {
            switch outbound(i, p, socket) {
            case .ok(let text): return text
            case .failed(let m, let nonFatal):
                if nonFatal && config.nonFatalPacket {
                    log("  \(failure(m, warning: true).message)")
                    return "warning"
                }
                throw failure(m)
            }
        }
        try waitForEvent(i)
        do { return try inbound(p, socket) } catch { throw failure(error.description) }
    }

    // MARK: Which socket

    func findOrCreateSocket(_ p: PktPacket) -> PktSocket? {
        if case .tcp(let t) = p.transport {
            if let s = handleListen(p, t) { return s }
            if let s = handleConnect(p, t) { return s }
        }
        if let s = socketUnderTest {
            switch p.transport {
            case .tcp: if s.proto == 6 { return s }
            case .udp: if s.proto == 17 { return s }
            case .icmp: if s.proto == 6 || s.proto == 17 || s.proto == 1 { return s }
            }
        }
        switch p.transport {
        case .tcp(let t) where t.sourcePort != 0 || t.destinationPort != 0: return socketUnderTest
        case .udp(_, let sp, let dp) where sp != 0 || dp != 0: return socketUnderTest
        default: return nil
        }
    }

    /// An inbound SYN for a listener (or for no socket at all) makes a child socket, with a
    /// fresh peer port; the script's later packets go to it.
    func handleListen(_ p: PktPacket, _ t: PktTCP) -> PktSocket? {
        guard p.direction == .inbound, socketUnderTest == nil || socketUnderTest?.state == .passiveListening else { return nil }
        let s = PktSocket()
        s.state = .passivePacketReceived
        s.proto = 6
        s.scriptRemoteISN = t.sequence
        s.liveRemoteISN = t.sequence
        s.remoteIP = map.peer
        s.remotePort = ephemeralPort()
        s.localIP = map.host
        s.localPort = config.bindPort
        sockets.append(s)
        socketUnderTest = s
        return s
    }

    /// The host's SYN after connect(): the script's ISN for it.
    func handleConnect(_ p: PktPacket, _ t: PktTCP) -> PktSocket? {
        guard p.direction == .outbound, t.syn, !t.ack, let s = socketUnderTest, s.state == .activeConnecting else { return nil }
        s.state = .activeSynSent
        s.scriptLocalISN = t.sequence
        return s
    }

    /// A fresh port for the peer's side of each passive connection. packetdrill binds a socket
    /// to port 0 for it; klab counts up from 40000 instead, so no socket of klab's own shows in
    /// the trace (the host's own ports face the peer's 8080, so these cannot collide).
    func ephemeralPort() -> UInt16 {
        nextPeerPort &+= 1
        return nextPeerPort
    }

    /// The socket under test, when the live packet is on its 4-tuple.
    func findSocketForLive(_ w: PktWirePacket) -> (PktSocket, PktDirection)? {
        guard let s = socketUnderTest else { return nil }
        let icmp = s.proto == 1 && w.isICMP
        if (w.source == s.remoteIP && w.destination == s.localIP) && (icmp || (w.sourcePort == s.remotePort && w.destinationPort == s.localPort && !w.isICMP)) {
            return (s, .inbound)
        }
        if (w.source == s.localIP && w.destination == s.remoteIP) && (icmp || (w.sourcePort == s.localPort && w.destinationPort == s.remotePort && !w.isICMP)) {
            return (s, .outbound)
        }
        return nil
    }

    /// The first packet of a connect(): its source fills in the socket's live tuple and ISN.
    func findConnectForLive(_ w: PktWirePacket) -> PktSocket? {
        guard let s = socketUnderTest else { return nil }
        let udp = w.isUDP && s.proto == 17 && s.state == .activeConnecting
        let icmp = w.isICMP && s.proto == 1 && s.state == .activeConnecting
        let tcp = w.isTCP && w.syn && !w.ack && s.proto == 6 && s.state == .activeSynSent
        guard udp || icmp || tcp else { return nil }
        guard w.destination == s.remoteIP, icmp || w.destinationPort == s.remotePort else { return nil }
        s.localIP = w.source
        s.localPort = w.sourcePort
        if tcp { s.liveLocalISN = w.sequence }
        return s
    }

    // MARK: Inbound

    func inbound(_ p: PktPacket, _ s: PktSocket) throws(PktEvalError) -> String {
        if case .tcp(let t) = p.transport {
            if s.state == .passiveSynackSent && t.ack {
                s.state = .passiveSynackAcked
            } else if s.state == .activeSynSent && t.syn && t.ack {
                s.state = .activeSynAcked
                s.scriptRemoteISN = t.sequence
                s.liveRemoteISN = t.sequence
            }
        }
        let w = try live(p, s)
        var header = [UInt8](repeating: 0, count: tun.headerLength)
        if let mss = config.mss, w.isTCP, header.count >= 6 {
            // virtio_net_hdr: gso_type VIRTIO_NET_HDR_GSO_TCPV4, gso_size (host order).
            header[1] = 1
            header[4] = UInt8(mss & 0xff)
            header[5] = UInt8((mss >> 8) & 0xff)
        }
        do {
            try (header + w.serialize()).withUnsafeBytes { _ = try tap.write(tun, link: wire.link, $0, header: header.count) }
        } catch { throw PktEvalError("\(error)") }
        return "injected " + w.summary()
    }

    /// map_inbound_packet: the script's packet with live addresses, ports, sequence numbers,
    /// SACK blocks and TS ecr.
    func live(_ p: PktPacket, _ s: PktSocket) throws(PktEvalError) -> PktWirePacket {
        var w = PktWirePacket()
        w.tos = p.ip.tos
        w.ttl = p.ip.ttl == 0 ? 255 : p.ip.ttl
        w.source = s.remoteIP
        w.destination = s.localIP
        switch p.transport {
        case .tcp(let t):
            w.proto = 6
            w.sourcePort = t.sourcePort != 0 ? t.sourcePort : s.remotePort
            w.destinationPort = t.destinationPort != 0 ? t.destinationPort : s.localPort
            (w.fin, w.syn, w.rst, w.psh, w.ack, w.urg, w.ece, w.cwr, w.ae) = (t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr, t.ae)
            w.sequence = t.sequence &+ s.remoteOffset(syn: t.syn)
            let ackOffset = s.localOffset(syn: t.syn)
            w.ackNumber = t.ack ? t.ackNumber &+ ackOffset : t.ackNumber
            w.window = t.window ?? 0
            w.urgentPointer = t.urgentPointer
            w.options = (t.options ?? []).flatMap(\.bytes)
            PktPlayer.offsetSACK(&w.options, by: ackOffset)
            if t.syn && !t.ack { remapCookie(&w.options, from: (map.remote, map.local), to: (map.peer, map.host)) }
            if t.ack, let at = PktWirePacket.timestampOffset(w.options) {
                let ecr = PktWirePacket.be32(w.options, at + 4)
                let liveEcr: UInt32
                if let v = s.tsValMap[ecr] {
                    liveEcr = v
                } else if config.tcpTsEcrScaled, let first = s.firstTS {
                    liveEcr = ecr &- first.script &+ first.actual
                } else {
                    throw PktEvalError("unable to infer live TS ecr for script TS ecr \(ecr);  no matching or preceding outbound TS val")
                }
                PktPlayer.put32(&w.options, at + 4, liveEcr)
            }
            w.payload = [UInt8](repeating: 0, count: Int(t.payload))
        case .udp(let n, let sp, let dp):
            w.proto = 17
            w.sourcePort = sp != 0 ? sp : s.remotePort
            w.destinationPort = dp != 0 ? dp : s.localPort
            w.payload = [UInt8](repeating: 0, count: Int(n))
        case .icmp(let m):
            w.proto = 1
            w.icmpType = m.type
            w.icmpCode = m.code
            w.icmpRest = UInt32(m.echoID) << 16 | UInt32(m.mtu ?? 0)
            func ipHeader(_ proto: UInt8, _ length: Int) -> [UInt8] {
                var h: [UInt8] = [0x45, 0, UInt8(length >> 8), UInt8(length & 0xff), 0, 0, 0, 0, 255, proto, 0, 0]
                for a in [s.localIP, s.remoteIP] { h += [UInt8(a >> 24), UInt8((a >> 16) & 0xff), UInt8((a >> 8) & 0xff), UInt8(a & 0xff)] }
                return h
            }
            let ports: [UInt8] = [UInt8(s.localPort >> 8), UInt8(s.localPort & 0xff), UInt8(s.remotePort >> 8), UInt8(s.remotePort & 0xff)]
            switch m.echoed {
            case .tcp(let start, let n):
                var e = ipHeader(6, 40 + Int(n)) + ports + [0, 0, 0, 0]
                PktPlayer.put32(&e, 24, start &+ s.localOffset(syn: false))
                w.echoed = e
            case .udp(let n):
                w.echoed = ipHeader(17, 28 + Int(n)) + ports + [UInt8((8 + Int(n)) >> 8), UInt8((8 + Int(n)) & 0xff), 0, 0]
            case .raw(let n):
                guard n >= 8 else { throw PktEvalError("icmp_bytes \(n) smaller than icmp header length 8") }
                w.echoed = [UInt8](repeating: 0, count: Int(n) - 8)
            case .none:
                w.echoed = []
            }
        }
        return w
    }

    static func put32(_ b: inout [UInt8], _ o: Int, _ v: UInt32) {
        b[o] = UInt8(v >> 24)
        b[o + 1] = UInt8((v >> 16) & 0xff)
        b[o + 2] = UInt8((v >> 8) & 0xff)
        b[o + 3] = UInt8(v & 0xff)
    }

    /// Adds `offset` to both edges of every SACK block (run_packet.c offset_sack_blocks).
    static func offsetSACK(_ o: inout [UInt8], by offset: UInt32) {
        var i = 0
        while i < o.count {
            if o[i] == 0 || o[i] == 1 { i += 1; continue }
            guard i + 1 < o.count, o[i + 1] >= 2, i + Int(o[i + 1]) <= o.count else { return }
            let len = Int(o[i + 1])
            if o[i] == 5 && (len - 2) % 8 == 0 {
                for k in stride(from: i + 2, to: i + len, by: 4) { put32(&o, k, PktWirePacket.be32(o, k) &+ offset) }
            }
            i += len
        }
    }

    // MARK: Outbound

    enum Outcome {
        case ok(String)
        case failed(String, nonFatal: Bool)
    }

    /// do_outbound_script_packet: sniff the host's next packet on the socket (several, summed
    /// up to the script's payload, unless --strict_segments), map it and verify it.
    func outbound(_ i: Int, _ p: PktPacket, _ s: PktSocket) -> Outcome {
        var scriptSynAck = false
        if case .tcp(let t) = p.transport, t.syn && t.ack {
            scriptSynAck = true
            if s.state == .passivePacketReceived { s.scriptLocalISN = t.sequence }
        }
        let want = PktPlayer.payloadLength(p)
        var sniffed: [(packet: PktWirePacket, us: Int64)] = []
        var got = 0
        repeat {
            let one: (PktWirePacket, Int64)
            switch sniff(i, expected: s) {
            case .success(let x): one = x
            case .failure(let e): return .failed(e.description, nonFatal: false)
            }
            var (live, us) = one
            if s.state == .passivePacketReceived && scriptSynAck {
                s.state = .passiveSynackSent
                s.liveLocalISN = live.sequence
            }
            if live.isTCP {
                // tcp_convert_seq_number: live sequence space to the script's.
                live.sequence = live.sequence &- s.localOffset(syn: live.syn)
                let off = 0 &- s.remoteOffset(syn: live.syn)
                if live.ack { live.ackNumber = live.ackNumber &+ off }
                PktPlayer.offsetSACK(&live.options, by: off)
            }
            let n = PktPlayer.livePayload(live)
            if let prev = sniffed.last {
                if (prev.packet.source, prev.packet.destination, prev.packet.sourcePort, prev.packet.destinationPort)
                    != (live.source, live.destination, live.sourcePort, live.destinationPort) {
                    sniffed = []
                    got = 0
                } else if let err = verifyHeaders(live, prev.packet, strict: false) ?? fragmentSize(n, prev.packet, got, want) {
                    var m = err + "\n   script packet: \(dump(scriptPacket(p), at: events[i].timeUs, script: p))"
                    for (k, x) in (sniffed + [(live, us)]).enumerated() { m += "\nactual #\(k) packet: \(dump(x.0, at: liveToScript(x.1)))" }
                    return .failed(m, nonFatal: false)
                }
            }
            sniffed.append((live, us))
            got += n
            us = 0
        } while got < want && !config.strictSegments
        if got != want {
            return .failed("live packet payload: expected \(want) bytes vs actual \(got) bytes", nonFatal: false)
        }
        let live = sniffed.count == 1 ? sniffed[0] : PktPlayer.aggregate(sniffed)
        return verifyOutbound(i, p, s, live.packet, live.us)
    }

    func fragmentSize(_ n: Int, _ prev: PktWirePacket, _ got: Int, _ want: Int) -> String? {
        let prevLen = PktPlayer.livePayload(prev)
        if n < want - got && n != prevLen {
            return "fragment payload: expected \(prevLen) bytes vs actual \(n) bytes; total payload: expected \(want) bytes vs actual \(n + got) bytes"
        }
        return nil
    }

    /// Several sniffed packets as one: the last one's headers, the first one's sequence number
    /// and CWR, all the payloads (packet.c aggregate_packets).
    static func aggregate(_ list: [(packet: PktWirePacket, us: Int64)]) -> (packet: PktWirePacket, us: Int64) {
        var p = list.last!.packet
        p.sequence = list[0].packet.sequence
        p.cwr = list[0].packet.cwr
        p.payload = list.flatMap(\.packet.payload)
        p.totalLength = p.ipHeaderLength + (p.isTCP ? 20 + p.options.count : 8) + p.payload.count
        return (p, list.last!.us)
    }

    static func payloadLength(_ p: PktPacket) -> Int {
        switch p.transport {
        case .tcp(let t): Int(t.payload)
        case .udp(let n, _, _): Int(n)
        case .icmp(let m):
            switch m.echoed {
            case .tcp, .udp: 28
            case .raw(let n): max(0, Int(n) - 8)
            case .none: 0
            }
        }
    }

    static func livePayload(_ w: PktWirePacket) -> Int { w.isICMP ? w.echoed.count : w.payload.count }

    /// The host's next packet on the expected socket; others (an old connection's, the
    /// kernel's own) are passed over as packetdrill passes them over.
    func sniff(_ i: Int, expected: PktSocket) -> Result<(PktWirePacket, Int64), PktEvalError> {
        let e = events[i]
        let expectedUs = e.timeUs - scriptLastTimeUs
        let expectedEndUs = (e.timeEndUs ?? -1) - scriptLastTimeUs
        let timeoutUs = e.timeType == .any ? PktPlayer.maxRuntimeUs : (Int64(Double(max(expectedUs, expectedEndUs)) / 1e6) + 2) * 1_000_000
        let deadline = nowUs() + timeoutUs
        while true {
            let left = deadline - nowUs()
            if left <= 0 { return .failure(PktEvalError("Timed out waiting for packet")) }
            cond.unlock()
            let got: Wire.Received?
            do {
                got = try readOutbound(timeoutMs: Int(left / 1000) + 1, interrupted: { [self] in
                    Interrupt.requested || cond.withLock { threadFailure != nil }
                })
            } catch {
                cond.lock()
                return .failure(PktEvalError("reading the TUN: \(error)"))
            }
            cond.lock()
            guard let got else {
                if let f = threadFailure { return .failure(PktEvalError(f)) }
                if Interrupt.requested { return .failure(PktEvalError("interrupted")) }
                return .failure(PktEvalError("Timed out waiting for packet"))
            }
            guard let w = PktWirePacket.parse(got.bytes) else { continue }
            var socket: PktSocket?
            if let (s, dir) = findSocketForLive(w), dir == .outbound { socket = s } else { socket = findConnectForLive(w) }
            guard let socket else { continue }
            if socket !== expected { return .failure(PktEvalError("packet is not for expected socket")) }
            return .success((w, Int64(got.monotonicNs / 1000)))
        }
    }

    /// The host's next packet, read from the TUN on this thread (packetdrill sniffs on its one
    /// thread too: a reader thread in between costs a wakeup per packet) and stamped on return.
    func readOutbound(timeoutMs: Int, interrupted: () -> Bool) throws -> Wire.Received? {
        let deadline = nowUs() + Int64(timeoutMs) * 1000
        while !interrupted() {
            let left = deadline - nowUs()
            if left <= 0 { return nil }
            guard let n = try tun.read(into: tunBuffer, timeoutMs: Int32(min(left / 1000 + 1, 50))) else { continue }
            let stamp = tap.stamp()
            guard n >= tun.headerLength else { tap.cancel(); continue }
            let packet = UnsafeRawBufferPointer(rebasing: tunBuffer[tun.headerLength..<n])
            tap.record(link: wire.link, intoHost: false, at: stamp, packet)
            return Wire.Received(monotonicNs: stamp, bytes: Array(packet))
        }
        return nil
    }

    /// Packets the host sent that the script never sniffed, taken off the TUN at the end.
    func leftovers() -> Int {
        wire.recorder.readingStopped(at: Clock.monotonicNs())
        var count = 0
        while let n = try? tun.read(into: tunBuffer, timeoutMs: 0), n >= tun.headerLength {
            tap.record(link: wire.link, intoHost: false, at: tap.stamp(), UnsafeRawBufferPointer(rebasing: tunBuffer[tun.headerLength..<n]))
            count += 1
        }
        return count
    }

    /// The script's packet in script space, as packetdrill builds it to compare with.
    func scriptPacket(_ p: PktPacket) -> PktWirePacket {
        var w = PktWirePacket()
        w.tos = p.ip.tos
        w.ttl = p.ip.ttl == 0 ? 255 : p.ip.ttl
        switch p.transport {
        case .tcp(let t):
            w.proto = 6
            (w.fin, w.syn, w.rst, w.psh, w.ack, w.urg, w.ece, w.cwr, w.ae) = (t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr, t.ae)
            w.sequence = t.sequence
            w.ackNumber = t.ackNumber
            w.window = t.window ?? 0
            w.urgentPointer = t.urgentPointer
            w.options = (t.options ?? []).flatMap(\.bytes)
            w.payload = [UInt8](repeating: 0, count: Int(t.payload))
            w.totalLength = 40 + w.options.count + w.payload.count
        case .udp(let n, let sp, let dp):
            w.proto = 17
            (w.sourcePort, w.destinationPort) = (sp, dp)
            w.udpLength = 8 + n
            w.payload = [UInt8](repeating: 0, count: Int(n))
            w.totalLength = 28 + Int(n)
        case .icmp(let m):
            w.proto = 1
            (w.icmpType, w.icmpCode) = (m.type, m.code)
            w.echoed = [UInt8](repeating: 0, count: PktPlayer.payloadLength(p))
            w.totalLength = 28 + w.echoed.count
        }
        return w
    }

    func dump(_ w: PktWirePacket, at us: Int64, script p: PktPacket? = nil) -> String {
        var winShown = true, ace = false
        if let p, case .tcp(let t) = p.transport {
            winShown = t.window != nil
            ace = t.ace != nil
        }
        return String(format: "%9.6f ", Double(us) / 1e6) + w.summary(windowShown: winShown, aceShown: ace)
    }

    func field(_ name: String, _ expected: UInt32, _ actual: UInt32) -> String? {
        expected == actual ? nil
            : "live packet field \(name): expected: \(expected) (0x\(String(expected, radix: 16))) vs actual: \(actual) (0x\(String(actual, radix: 16)))"
    }

    /// verify_outbound_live_headers: layer by layer, IPv4 then TCP, UDP or ICMP. `strict`
    /// is false between the parts of one aggregated send.
    func verifyHeaders(_ a: PktWirePacket, _ s: PktWirePacket, strict: Bool, scriptPacket p: PktPacket? = nil) -> String? {
        var optionsNoCheck = false, windowNoCheck = false, ace = false
        var tosCheck = PktIPInfo.TOSCheck.none
        if let p {
            tosCheck = p.ip.check
            if case .tcp(let t) = p.transport {
                optionsNoCheck = t.options == nil
                windowNoCheck = t.window == nil
                ace = t.ace != nil
            }
        } else {
            windowNoCheck = true
        }
        if a.proto != s.proto {
            let names: [UInt8: String] = [6: "tcp", 17: "udp", 1: "icmpv4"]
            return "live packet header layer 1: expected: \(names[s.proto] ?? "?") header vs actual: \(names[a.proto] ?? "?") header"
        }
        let allowance = optionsNoCheck ? a.options.count : 0
        if let e = field("ipv4_version", 4, 4) ?? field("ipv4_protocol", UInt32(s.proto), UInt32(a.proto))
            ?? field("ipv4_header_length", 5, UInt32(a.ipHeaderLength / 4)) { return e }
        if strict, let e = field("ipv4_total_length", UInt32(s.totalLength + allowance), UInt32(a.totalLength)) { return e }
        switch tosCheck {
        case .ect01:
            if a.tos & 3 != 1 && a.tos & 3 != 2 { return "live packet field ip_ecn: expected: 0x1 or 0x2 vs actual: 0x\(String(a.tos & 3, radix: 16))" }
        case .ecn:
            if let e = field("ip_ecn", UInt32(s.tos), UInt32(a.tos & 3)) { return e }
        case .tos:
            if let e = field("tos", UInt32(s.tos), UInt32(a.tos)) { return e }
        case .none: break
        }
        if s.ttl != 255, let e = field("ttl", UInt32(s.ttl), UInt32(a.ttl)) { return e }
        switch a.proto {
        case 6:
            func b(_ x: Bool) -> UInt32 { x ? 1 : 0 }
            var checks: [(String, UInt32, UInt32)] = [("tcp_data_offset", UInt32(s.dataOffsetWords + allowance / 4), UInt32(a.dataOffsetWords))]
            if strict { checks.append(("tcp_fin", b(s.fin), b(a.fin))) }
            checks += [("tcp_syn", b(s.syn), b(a.syn)), ("tcp_rst", b(s.rst), b(a.rst))]
            if strict { checks.append(("tcp_psh", b(s.psh), b(a.psh))) }
            checks += [("tcp_ack", b(s.ack), b(a.ack)), ("tcp_urg", b(s.urg), b(a.urg))]
            if ace {
                checks.append(("tcp_ace", UInt32(s.ace), UInt32(a.ace)))
            } else {
                checks.append(("tcp_ece", b(s.ece), b(a.ece)))
                if strict { checks.append(("tcp_cwr", b(s.cwr), b(a.cwr))) }
                checks.append(("tcp_ae", b(s.ae), b(a.ae)))
            }
            checks.append(("tcp_reserved_bits", UInt32(s.reserved), UInt32(a.reserved)))
            checks.append(("tcp_seq", strict ? s.sequence : s.sequence &+ UInt32(s.payload.count), a.sequence))
            checks.append(("tcp_ack_seq", s.ackNumber, a.ackNumber))
            if !windowNoCheck { checks.append(("tcp_window", UInt32(s.window), UInt32(a.window))) }
            checks.append(("tcp_urg_ptr", UInt32(s.urgentPointer), UInt32(a.urgentPointer)))
            for (n, e, v) in checks { if let err = field(n, e, v) { return err } }
        case 17:
            if strict, let e = field("udp_len", UInt32(s.udpLength), UInt32(a.udpLength)) { return e }
        default:
            if let e = field("icmp_type", UInt32(s.icmpType), UInt32(a.icmpType)) ?? field("icmp_code", UInt32(s.icmpCode), UInt32(a.icmpCode)) { return e }
        }
        return nil
    }

    /// verify_outbound_live_packet: map the TS val, check headers, options, payload and time.
    func verifyOutbound(_ i: Int, _ p: PktPacket, _ s: PktSocket, _ live: PktWirePacket, _ liveUs: Int64) -> Outcome {
        let e = events[i]
        let script = scriptPacket(p)
        var actual = live
        func failed(_ m: String, nonFatal: Bool) -> Outcome {
            .failed(m + "\nscript packet: \(dump(script, at: e.timeUs, script: p))\nactual packet: \(dump(actual, at: liveToScript(liveUs)))", nonFatal: nonFatal)
        }
        if !live.ipChecksumOK { return failed("bad outbound IP checksum", nonFatal: false) }
        var scriptTS: (val: UInt32, ecr: UInt32)?
        if case .tcp(let t) = p.transport, let at = PktWirePacket.timestampOffset(script.options), t.options != nil {
            scriptTS = (PktWirePacket.be32(script.options, at), PktWirePacket.be32(script.options, at + 4))
        }
        if actual.syn && actual.ack { remapCookie(&actual.options, from: (map.peer, map.host), to: (map.remote, map.local)) }
        if let scriptTS, let at = PktWirePacket.timestampOffset(actual.options) {
            let actualVal = PktWirePacket.be32(actual.options, at)
            s.tsValMap[scriptTS.val] = actualVal
            if s.firstTS == nil { s.firstTS = (scriptTS.val, actualVal) }
            PktPlayer.put32(&actual.options, at, s.firstTS!.script &+ (actualVal &- s.firstTS!.actual))
        }
        if let err = verifyHeaders(actual, script, strict: true, scriptPacket: p) { return failed(err, nonFatal: true) }
        if case .tcp(let t) = p.transport, t.options != nil, let err = verifyOptions(i, actual, script) {
            return failed(err, nonFatal: true)
        }
        if !actual.isICMP, actual.payload != script.payload { return failed("incorrect outbound data payload", nonFatal: true) }
        if let err = verifyTime(e.timeType, e.timeUs, e.timeEndUs, live: liveUs, lastEventUs: last.map { events[$0].timeUs },
                                "outbound packet", event: i) {
            return failed(err, nonFatal: true)
        }
        return .ok(actual.summary())
    }

    /// verify_outbound_live_tcp_options: the same options in the same order; TS val within the
    /// tolerance when --tcp_ts_tick_usecs is set; every other option byte for byte.
    func verifyOptions(_ i: Int, _ a: PktWirePacket, _ s: PktWirePacket) -> String? {
        guard let al = PktWirePacket.optionList(a.options), let sl = PktWirePacket.optionList(s.options), al.count == sl.count else {
            return "bad outbound TCP options"
        }
        var tolerance = config.toleranceUs
        let dynamic = Int64(config.tolerancePercent / 100.0 * Double(events[i].timeUs - scriptStartUs))
        if dynamic > tolerance { tolerance = dynamic }
        for (x, y) in zip(al, sl) {
            guard x.kind == y.kind else { return "bad outbound TCP options" }
            switch x.kind {
            case 0, 1: continue
            case 8:
                guard x.bytes.count == 10, y.bytes.count == 10 else { continue }
                let diff = Int64(Int32(bitPattern: PktWirePacket.be32(x.bytes, 2) &- PktWirePacket.be32(y.bytes, 2)))
                if config.tcpTsTickUs != 0 && abs(diff) * config.tcpTsTickUs > tolerance {
                    return "bad outbound TCP timestamp value, tolerance \(tolerance)"
                }
            default:
                var kind: String?
                if x.bytes.count != y.bytes.count { kind = "bad length" }
                if y.bytes.count > 2 && x.bytes.dropFirst(2).prefix(y.bytes.count - 2) != y.bytes.dropFirst(2) { kind = "bad value" }
                if let kind {
                    return "\(kind) in outbound TCP option (kind=\(y.kind)): expected: \(PktWirePacket.describeOptions(y.bytes)) actual: \(PktWirePacket.describeOptions(x.bytes))"
                }
            }
        }
        return nil
    }
}

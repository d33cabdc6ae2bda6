import Foundation
import KlabPacket
import Testing

@testable import KlabScenario

/// The packetdrill language without root: lexer, parser, semantic checks, what klab names as
/// unsupported, the address map, string escapes and the packet codec.
struct PktParserTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var shipped: [String] {
        let dir = root.appendingPathComponent("lab/packetdrill").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".pkt") }.sorted()
    }

    func parse(_ text: String, defines: [String: String] = PktParser.ipv4Defines) throws(ScenarioError) -> PktScript {
        try PktParser.parse(text, file: "t.pkt", defines: defines)
    }

    /// The error a script gets, as `line:column: message`.
    func error(_ text: String) -> String {
        do {
            _ = try parse(text)
            return "no error"
        } catch {
            return "\(error.location.map { "\($0.line):\($0.column)" } ?? "-"): \(error.message)"
        }
    }

    func kinds(_ text: String) throws -> [PktTokenKind] {
        var l = PktLexer(text, file: "t", defines: ["N": "7", "STR": "\"x\"", "C": "`ls`", "W": "host_unreachable"])
        var out: [PktTokenKind] = []
        while true {
            let t = try l.next()
            if t.kind == .end { return out }
            out.append(t.kind)
        }
    }

    @Test(arguments: shipped)
    func shippedScriptsParse(_ file: String) throws {
        let s = try PktParser.load(Self.root.appendingPathComponent("lab/packetdrill/\(file)").path, defines: PktParser.ipv4Defines)
        #expect(s.name + ".pkt" == file)
        #expect(!s.events.isEmpty)
    }

    @Test func lexerTakesTheLongestMatchAsFlexDoes() throws {
        #expect(try kinds("+0...0.100") == [.char("+"), .integer(0), .ellipsis, .float(0.1)])
        #expect(try kinds("192.168.0.1 1.5 .25") == [.ipv4("192.168.0.1"), .float(1.5), .float(0.25)])
        #expect(try kinds("0x1f 00abe8 ack acked sequence#") == [.hex(31), .word("00abe8"), .keyword("ack"), .word("acked"), .keyword("sequence#")])
        #expect(try kinds("-1 - --mss=1000") == [.integer(-1), .char("-"), .option("mss"), .char("="), .integer(1000)])
        #expect(try kinds("N STR C W") == [.integer(7), .string("x"), .backQuoted("ls"), .word("host_unreachable")])
        #expect(try kinds("\"a\\\"b\" `x y` %{ assert 1 }% // c\n/* d */ Flags") == [.string("a\\\"b"), .backQuoted("x y"), .code("assert 1"), .keyword("flags")])
        let flags = try kinds("S. P. F.")
        #expect(flags == [.word("S"), .char("."), .word("P"), .char("."), .word("F"), .char(".")], "\(flags)")
        #expect(try kinds("fd3d::1") == [.ipv6("fd3d::1")])
    }

    @Test func everyConstructParses() throws {
        let s = try parse("""
            --tolerance_usecs=10000
            --mss=1000
            --define=PORT=8081
            `sysctl -q net.ipv4.tcp_timestamps=1`
                0 socket(..., SOCK_STREAM|SOCK_NONBLOCK, IPPROTO_TCP) = 3
               +0 setsockopt(3, SOL_SOCKET, SO_LINGER, {onoff=1, linger=0}, 8) = 0
               +0 connect(3, ..., ...) = -1 EINPROGRESS (Operation now in progress)
               +0 > S 0:0(0) <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 8>
              +.1 < [ect0] S. 0:0(0) ack 1 win 5792 <mss 1460,nop,nop,sackOK,FO 01020304,nop,nop>
                * > . 1:1(0) ack 1 <...>
            +.1~+.2 > . 1:1(0) ack 1
            0.3~0.4 > (tos 0x0) P. 1:11(10) ack 1 win 229
               +0 < 8080 > 40000 . 1:1(0) ack 11 win 257 <nop,nop,sack 1:2 3:4,nop,nop,TS val 1 ecr 100>
               +0 < icmp unreachable frag_needed mtu 1200 [1:11(10)]
               +0 < udp (10)
            +0...0.100 read(3, ..., 1000) = 10
               +0 poll([{fd=3, events=POLLIN|POLLOUT, revents=POLLOUT}], 1, 0) = 1
               +0 epoll_ctl(5, EPOLL_CTL_ADD, 3, {events=EPOLLIN, fd=3}) = 0
               +0 sendmsg(3, {msg_name(...)=..., msg_iov(1)=[{..., 10}], msg_flags=0}, 0) = 10
               +0 getsockopt(3, SOL_TCP, TCP_CONGESTION, "reno", [4]) = 0
               +0 ioctl(3, SIOCINQ, [0]) = 0
               +0 `echo hi`
               +0 %{ assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd }%
            `echo bye`
            """)
        #expect(s.options.map(\.name) == ["tolerance_usecs", "mss", "define"])
        #expect(s.config.toleranceUs == 10_000 && s.config.mss == 1000 && s.config.defines["PORT"] == "8081")
        #expect(s.initCommand?.text == "sysctl -q net.ipv4.tcp_timestamps=1")
        #expect(s.cleanupCommand?.text == "echo bye")
        #expect(s.events.count == 19)
        #expect(s.events.map(\.timeType) == [.absolute, .relative, .relative, .relative, .relative, .any, .relativeRange, .absoluteRange]
                + [PktTimeType](repeating: .relative, count: 11))
        #expect(s.events[6].timeUs == 100_000 && s.events[6].timeEndUs == 200_000)
        guard case .packet(let synack) = s.events[4].action, case .tcp(let t) = synack.transport else { Issue.record("no SYN-ACK"); return }
        #expect(synack.direction == .inbound && synack.ip.check == .ecn && synack.ip.tos == 2)
        #expect(t.syn && t.ack && t.window == 5792 && t.ackNumber == 1)
        #expect(t.options?.last == .nop && t.options?.contains(.fastOpen([1, 2, 3, 4], experimental: false)) == true)
        guard case .packet(let star) = s.events[5].action, case .tcp(let a) = star.transport else { Issue.record("no ACK"); return }
        #expect(a.options == nil && a.window == nil)
        guard case .packet(let ported) = s.events[8].action, case .tcp(let p) = ported.transport else { Issue.record("no ports"); return }
        #expect(p.sourcePort == 8080 && p.destinationPort == 40000)
        #expect(p.options?.contains(.sack([(1, 2), (3, 4)])) == true)
        guard case .packet(let icmp) = s.events[9].action, case .icmp(let m) = icmp.transport else { Issue.record("no icmp"); return }
        #expect(m.type == 3 && m.code == 4 && m.mtu == 1200 && m.echoed == .tcp(start: 1, payload: 10))
        guard case .syscall(let read) = s.events[11].action else { Issue.record("no read"); return }
        #expect(read.isBlocking && read.endUs == 100_000)
        guard case .syscall(let connect) = s.events[2].action else { Issue.record("no connect"); return }
        #expect(connect.errnoName == "EINPROGRESS")
        guard case .code(let code) = s.events[18].action else { Issue.record("no code"); return }
        #expect(code == "assert tcpi_snd_cwnd == 10, tcpi_snd_cwnd")
    }

    @Test func flagsAndOptionsEncodeAsPacketdrillDoes() throws {
        let s = try parse("""
            0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
            +0 < SEW 0:0(0) win 100 <mss 1460,FOEXP 00112233,md5 000102030405060708090a0b0c0d0e0f,nop,nop>
            +0 > S.5 0:0(0) ack 1 <ECN e1b 1 ceb 2 e0b 3,nop>
            +0 > - 1:1(0)
            """)
        guard case .packet(let a) = s.events[1].action, case .tcp(let t) = a.transport,
              case .packet(let b) = s.events[2].action, case .tcp(let u) = b.transport,
              case .packet(let c) = s.events[3].action, case .tcp(let v) = c.transport else { Issue.record("packets"); return }
        #expect(t.syn && t.ece && t.cwr && !t.ae && t.ace == nil)
        #expect(u.syn && u.ack && u.ace == 5 && u.ece && !u.cwr && u.ae)
        #expect(!v.syn && !v.ack && v.flagsText.isEmpty)
        #expect(t.options!.flatMap(\.bytes).count == 4 + 8 + 18 + 2)
        #expect(PktTCPOption.fastOpen([0, 0x11], experimental: true).bytes == [254, 6, 0xF9, 0x89, 0, 0x11])
        #expect(PktTCPOption.accECN(ect1First: true, fields: [1, 2, 3]).bytes == [174, 11, 0, 0, 1, 0, 0, 2, 0, 0, 3])
        #expect(PktWirePacket.describeOptions(u.options!.flatMap(\.bytes)) == "ECN e1b 1 ceb 2 e0b 3,nop")
    }

    @Test func semanticErrorsAreTheOnesPacketdrillMakes() {
        let sock = "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
        #expect(error(sock + "+0 < S 0:0(0) <mss 1460>") == "2:6: semantic error: window must be specified for inbound packets")
        #expect(error(sock + "+0 < S 0:0(0) win 10 <...>") == "2:22: semantic error: <...> for TCP options can only be used with outbound packets")
        #expect(error(sock + "+0 > P. 1:11(9) ack 1") == "2:9: semantic error: inconsistent TCP sequence numbers and payload size")
        #expect(error(sock + "* write(3, ..., 1) = 1") == "2:1: semantic error: event time <star> can only be used with outbound packets")
        #expect(error(sock + "0.2~0.1 > . 1:1(0)") == "2:1: semantic error: time range is backwards")
        #expect(error(sock + "+0 > S 0:0(0) <mss 1460,nop>") == "2:15: semantic error: TCP options are not padded correctly to ensure TCP header is a multiple of 4 bytes: 1 excess bytes")
        #expect(error(sock + "+0 > SX 0:0(0)") == "2:6: semantic error: Invalid TCP flag: 'X'")
        #expect(error(sock + "+0 < icmp unreachable host_unreachable mtu 10") == "2:1: semantic error: ICMPv4 MTU is only valid for unreachable-frag_needed")
    }

    /// Found by lab/fuzz's pkt target: a time past Int64 microseconds trapped (arithmetic
    /// overflow, exit 132) where it must be an error at its place.
    @Test func timesOutOfRangeAreErrorsNotTraps() {
        let call = " socket(..., SOCK_STREAM, IPPROTO_TCP) = 3"
        let range = "semantic error: time out of range: at most 86400 s"
        #expect(error("+99999999999999" + call) == "1:2: " + range)
        #expect(error("1" + String(repeating: "0", count: 400) + ".5" + call) == "1:1: " + range)  // a Double's infinity
        #expect(error("0~99999999999" + call) == "1:3: " + range)
        #expect(error("+0...99999999999" + call) == "1:6: " + range)
        #expect(error("+86400" + call) == "no error")
    }

    @Test func parseErrorsSayWhereAndWhat() {
        #expect(error("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 > S 0:0 <mss 1460>") == "2:12: parse error at '<': expected '('")
        #expect(error("0 socket(..., SOCK_STREAM, IPPROTO_TCP)") == "1:40: parse error at end of file: expected '='")
        #expect(error("") == "1:1: parse error at end of file: expected an event (a time, then a packet, a system call, a `command` or %{ code }%)")
        #expect(error("0 write(3, \"abc) = 1").hasSuffix("unterminated string"))
        #expect(error("--bogus=1\n0 `true`") == "1:1: option 'bogus' unknown")
        #expect(error("--tolerance_usecs=0\n0 `true`") == "1:1: bad --tolerance_usecs: 0")
    }

    /// klab run --pkt-option: packetdrill's command line, applied after the script's own options.
    @Test func commandLineOptionsComeAfterTheScripts() throws {
        let text = "--tolerance_usecs=50000\n0 `true`"
        #expect(try parse(text).config.toleranceUs == 50_000)
        let s = try PktParser.parse(text, file: "t.pkt", options: ["tolerance_usecs=1000000", "strict_segments"])
        #expect(s.config.toleranceUs == 1_000_000 && s.config.strictSegments)
        for (option, message) in [("bogus=1", "--pkt-option bogus=1: option 'bogus' unknown"),
                                  ("tolerance_usecs", "--pkt-option tolerance_usecs: option 'tolerance_usecs' requires an argument"),
                                  ("tolerance_usecs=-3", "--pkt-option tolerance_usecs=-3: bad --tolerance_usecs: -3")] {
            #expect(throws: ScenarioError.self) { try PktParser.parse(text, file: "t.pkt", options: [option]) }
            do { _ = try PktParser.parse(text, file: "t.pkt", options: [option]) } catch { #expect(error.message == message) }
        }
    }

    @Test func whatKlabDoesNotRunIsNamedAtItsLine() {
        #expect(error("--ip_version=ipv6\n0 `true`") == "1:1: klab runs IPv4 scripts only: --ip_version=ipv6 is not supported")
        #expect(error("0 cap_set(CAP_EFFECTIVE, CAP_NET_ADMIN, CAP_CLEAR) = 0") == "1:3: klab does not support the 'cap_set' system call (capabilities) yet")
        #expect(error("0 frobnicate(3) = 0") == "1:3: Unknown system call: 'frobnicate'")
        #expect(error("0 setsockopt(3, SOL_TCP, TCP_NOTHING, [1], 4) = 0") == "1:26: unknown symbol: 'TCP_NOTHING'")
        #expect(error("0 > ipv4 1.2.3.4 > 5.6.7.8: . 1:1(0)") == "1:5: klab does not support encapsulated packets (ipv4 …) yet")
        #expect(error("--wire_client\n0 `true`").contains("wire client/server mode"))
        #expect(error("0 read(3, ..., 10) = 10 EAGAIN (x)") == "no error")
        #expect(error("0 read(3, ..., 10) = 10 EBOGUS (x)") == "1:25: unknown symbol: 'EBOGUS'")
    }

    @Test func addressesMoveIntoTheLab() throws {
        let m = try PktAddressMap(PktConfig())
        #expect(IPv4Text.format(m.host) == "198.18.0.1" && IPv4Text.format(m.peer) == "198.19.2.1")
        #expect(m.map("192.168.0.2").map(IPv4Text.format) == "198.18.0.2")
        #expect(m.map("127.0.0.1").map(IPv4Text.format) == "127.0.0.1")
        #expect(m.mapCommand("ip route change 192.0.2.1 via 192.168.0.2 dev tun0 mtu 1500 # 10.0.0.1 1.2.3")
                == "ip route change 198.19.2.1 via 198.18.0.2 dev tun0 mtu 1500 # 10.0.0.1 1.2.3")
        #expect(Scenario.labPrefix.contains(IPv4Address(rawValue: m.host)) && Scenario.labPrefix.contains(IPv4Address(rawValue: m.peer)))
        var c = PktConfig()
        c.remoteIP = "192.168.7.7"
        #expect(throws: ScenarioError.self) { try PktAddressMap(c) }
    }

    /// The cookie packetdrill's run_all.py passes as TFO_COOKIE for 192.0.2.1 > 192.168.0.1
    /// under the suites' key (defaults.sh): klab computes the kernel's cookies as the kernel does.
    @Test func fastOpenCookiesAreTheKernels() throws {
        let key = try #require(PktFastOpen.keys(sysctl: "a1a1a1a1-b2b2b2b2-c3c3c3c3-d4d4d4d4\n").first)
        let c = PktFastOpen.cookie(key: key, source: IPv4Text.parse("192.0.2.1")!, destination: IPv4Text.parse("192.168.0.1")!)
        #expect(c.map { String(format2: $0) }.joined() == "3021b9d889017eeb")
        let options = PktTCPOption.fastOpen(c, experimental: true).bytes + [1, 1]
        #expect(PktFastOpen.cookieOffset(options) == 4)
        #expect(PktFastOpen.keys(sysctl: "00000001-00000002-00000003-00000004,a-b-c-d").count == 2)
    }

    @Test func stringsLoseTheirEscapes() throws {
        #expect(try PktEval.unescape("a\\x41\\101\\n\\\\\\\"") == Array("aAA\n\\\"".utf8))
        #expect(throws: PktEvalError.self) { try PktEval.unescape("\\q") }
    }

    @Test func packetsBuiltParseBackWithValidChecksums() throws {
        var w = PktWirePacket()
        (w.source, w.destination, w.sourcePort, w.destinationPort) = (0xC613_0201, 0xC612_0001, 40000, 8080)
        (w.sequence, w.ackNumber, w.window, w.syn, w.ack, w.ae, w.tos, w.ttl) = (7, 9, 100, true, true, true, 2, 64)
        w.options = PktTCPOption.mss(1460).bytes
        w.payload = [1, 2, 3]
        let bytes = w.serialize()
        let p = try #require(PktWirePacket.parse(bytes))
        #expect(p.sequence == 7 && p.ackNumber == 9 && p.window == 100 && p.syn && p.ack && p.ae && !p.fin && p.tos == 2 && p.ttl == 64)
        #expect(p.options == w.options && p.payload == [1, 2, 3] && p.ipChecksumOK)
        // klab's own decoder agrees on both checksums.
        let k = try Packet.parse(bytes)
        #expect(k.ipChecksumValid && k.transportChecksumValid)
        #expect(p.summary() == "[ect0] S.A 7:10(3) ack 9 win 100 <mss 1460>")
    }
}

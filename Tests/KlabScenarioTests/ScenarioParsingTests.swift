import Foundation
import KlabPacket
import Testing

@testable import KlabScenario

struct ScenarioParsingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static var shipped: [String] {
        let dir = root.appendingPathComponent("lab/scenarios").path
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".yaml") }.sorted()
    }

    @Test(arguments: shipped)
    func shippedScenariosParse(_ file: String) throws {
        let s = try Scenario.load(Self.root.appendingPathComponent("lab/scenarios/\(file)").path)
        #expect(s.name + ".yaml" == file)
        #expect(!s.steps.isEmpty && !s.about.isEmpty)
        #expect(Scenario.labPrefix.contains(s.host.address) && Scenario.labPrefix.contains(s.peer))
    }

    @Test func shippedNamesAreUnique() throws {
        let all = try Scenario.load(all: Self.shipped.map { Self.root.appendingPathComponent("lab/scenarios/\($0)").path })
        #expect(all.count == Self.shipped.count && all.count >= 10)
    }

    let at = SourceLocation(file: "t", line: 1, column: 1)
    func packet(_ s: String) throws -> PacketSpec { try PacketNotation.parse(s, at: at) }

    @Test func packetdrillTCP() throws {
        #expect(try packet("S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>")
                == .tcp(TCPSegment(flags: .syn, start: 0, end: 0, window: 65535,
                                   options: [.mss(1460), .sackPermitted, .timestamp(val: 1, ecr: 0), .nop, .windowScale(7)])))
        #expect(try packet("P. 1:101(100) ack 1") == .tcp(TCPSegment(flags: [.psh, .ack], start: 1, end: 101, ack: 1)))
        #expect(try packet(". 1:1(0) ack 1 win 257 <...>") == .tcp(TCPSegment(flags: .ack, start: 1, end: 1, ack: 1, window: 257, options: nil)))
        #expect(try packet("R 0:0(0)") == .tcp(TCPSegment(flags: .rst, start: 0, end: 0)))
        #expect(try packet("F. 101:101(0) ack 1") == .tcp(TCPSegment(flags: [.fin, .ack], start: 101, end: 101, ack: 1)))
        #expect(try packet("P.U 1:2(1) ack 1 urg 1") == .tcp(TCPSegment(flags: [.psh, .ack, .urg], start: 1, end: 2, ack: 1, urgent: 1)))
    }

    @Test func packetdrillUDPAndICMP() throws {
        #expect(try packet("udp (100)") == .udp(length: 100))
        #expect(try packet("icmp echo_request") == .icmpEcho(reply: false, id: nil, sequence: nil, length: 56))
        #expect(try packet("icmp echo_reply id 7 seq 2 (8)") == .icmpEcho(reply: true, id: 7, sequence: 2, length: 8))
        #expect(try packet("icmp unreachable port_unreachable [udp (100)]") == .icmpUnreachable(code: 3, mtu: nil, quoting: .udp(length: 100)))
        #expect(try packet("icmp unreachable frag_needed mtu 1200 [P. 1:1449(1448)]")
                == .icmpUnreachable(code: 4, mtu: 1200, quoting: .tcp(TCPSegment(flags: [.psh, .ack], start: 1, end: 1449))))
        #expect(try packet("udp (3000) fragmented") == .fragmented(.udp(length: 3000), count: nil, mtu: nil))
        #expect(try packet("udp (3000) fragmented 3 mtu 1000") == .fragmented(.udp(length: 3000), count: 3, mtu: 1000))
        #expect(try packet("icmp unreachable port_unreachable [udp (100)]").description == "icmp unreachable port_unreachable [udp (100)]")
    }

    func error(_ yaml: String) -> ScenarioError? {
        do {
            _ = try Scenario.parse(yaml, file: "x.yaml")
            return nil
        } catch { return error }
    }

    /// Each bad input names its exact place and says what was expected.
    @Test(arguments: [
        ("name: t\nsteps:\n  - inject: S 0:0(1)\n", "x.yaml:3:15: error: 0:0 holds 0 bytes, not 1"),
        ("steps:\n  - expect: S. 0:0(0) <mss 1460,frob>\n",
         "x.yaml:2:33: error: unknown TCP option 'frob': klab knows mss, sackOK, sack, TS, wscale, nop, eol"),
        ("steps:\n  - expect: \"S. 0:0(0) <frob>\"\n",
         "x.yaml:2:25: error: unknown TCP option 'frob': klab knows mss, sackOK, sack, TS, wscale, nop, eol"),
        ("name: t\ncolour: red\nsteps: []\n",
         "x.yaml:2:1: error: unknown key 'colour'; a scenario has name, about, params, host, hosts, wire, peer, peer_port, host_port, timeout and steps"),
        ("host:\n  address: 10.0.0.1/24\nsteps: []\n",
         "x.yaml:2:12: error: 10.0.0.1 is outside the lab prefix 198.18.0.0/15; lab traffic must stay in it"),
        ("host:\n  name: h1\n  colour: red\nsteps: []\n",
         "x.yaml:3:3: error: unknown host key 'colour'; a host has name, address, mtu and sysctls"),
        ("host:\n  sysctls: {kernel.panic: 1}\nsteps: []\n",
         "x.yaml:2:13: error: unknown sysctl 'kernel.panic': a host takes net.* sysctls that exist under /proc/sys/net"),
        ("steps:\n  - frobnicate: x\n",
         "x.yaml:2:5: error: unknown step 'frobnicate'; a step is one of: socket, setsockopt, getsockopt, bind, listen, connect, accept, write, send, sendto, read, recv, recvfrom, shutdown, close, wait, sleep, inject, expect, run, stop, events, workload, flood, or a packet line \"< …\" / \"> …\""),
        ("steps:\n  - socket: l tcp\n  - bind: l 8080\n", "x.yaml:3:13: error: '8080' must be ADDRESS:PORT, like 0.0.0.0:8080"),
        ("steps:\n  - socket: l tcp\n  - bind: l 0.0.0.0:80\n    colour: red\n",
         "x.yaml:4:5: error: unknown key 'colour' in a bind step; it takes result, background, at, after, tolerance"),
        ("steps:\n  - socket: l tcp\n  - bind: l 0.0.0.0:80\n    result: EFROB\n",
         "x.yaml:4:13: error: result must be a number or an errno: \(Reader.errnos.keys.sorted().joined(separator: ", "))"),
        ("steps:\n  - socket: c tcp\n  - setsockopt: c TCP_FROB 1\n",
         "x.yaml:3:19: error: unknown option 'TCP_FROB'; klab knows \(Reader.socketOptions.map(\.name).joined(separator: ", "))"),
        ("steps:\n  - socket: c tcp\n  - send: c 1 MSG_OOB|MSG_FROB\n",
         "x.yaml:3:23: error: unknown flag 'MSG_FROB'; klab knows \(Reader.messageFlags.keys.sorted().joined(separator: ", "))"),
        ("steps:\n  - socket: c tcp\n  - socket: c udp\n", "x.yaml:3:5: error: duplicate name 'c': line 2 already has one open by that name"),
        ("steps:\n  - connect: c 198.18.0.2:80\n", "x.yaml:2:5: error: unknown socket 'c': create it first with socket: c tcp (or accept)"),
        ("steps:\n  - socket: c tcp\n  - close: c\n  - send: c 1\n", "x.yaml:4:5: error: socket 'c' is already closed"),
        ("steps:\n  - \"< S 0:0(0) win 65535\"\n  - \"+0.5 > S. 0:0(0) ak 1\"\n",
         "x.yaml:3:23: error: unexpected 'ak': after seq come ack N, win N, urg N and <options>"),
        ("steps:\n  - \"= S 0:0(0)\"\n",
         "x.yaml:2:6: error: a step written as a line is a packet: '< PACKET' (the peer injects it) or '> PACKET' (the host must send it)"),
        ("steps:\n  - sleep: 10ms\n    at: 2s\n  - sleep: 10ms\n    at: 1s\n", "x.yaml:4:5: error: impossible time: at 1s is before line 2's at 2s"),
        ("timeout: 1s\nsteps:\n  - sleep: 1ms\n    after: 2s\n",
         "x.yaml:3:5: error: impossible time: this step comes 2s in, past the scenario's timeout of 1s"),
        ("steps:\n  - sleep: 10ms\n    at: 1s\n    after: 1s\n",
         "x.yaml:3:5: error: impossible time: a step has 'at' (from the start) or 'after' (from the previous step), not both"),
        ("steps:\n  - sleep: soon\n", "x.yaml:2:12: error: sleep must be a duration with a unit, like 500ms, 0.5s or 250us, not 'soon'"),
        ("steps:\n  - run: [sleep, 10]\n    background: true\n  - run: [sleep, 10]\n    background: true\n",
         "x.yaml:4:5: error: duplicate name 'sleep': line 2 already has one running by that name; give this one name:"),
        ("steps:\n  - wait: srv\n",
         "x.yaml:2:5: error: nothing named 'srv' runs in the background here: wait takes a background call's socket or a background program"),
        ("steps:\n  - events: SOCKET_CREATE TCP_FROB*\n", "x.yaml:2:27: error: no schema event matches 'TCP_FROB*' (see klab schema for the names)"),
        ("steps:\n  - events: [SOCKET_CREATE]\n    level: kernel\n", "x.yaml:3:12: error: level must be socket, connection, protocol or ip"),
        ("steps:\n  - expect: icmp unreachable port_closed [udp (1)]\n",
         "x.yaml:2:30: error: unknown unreachable code 'port_closed': klab knows net_unreachable, host_unreachable, protocol_unreachable, port_unreachable, frag_needed, source_route_failed, net_unknown, host_unknown, source_host_isolated, net_prohibited, host_prohibited, net_unreachable_for_tos, host_unreachable_for_tos, packet_filtered, precedence_violation, precedence_cutoff"),
        ("steps:\n  - expect: P. 1:2(1) fragmented\n", "x.yaml:2:23: error: klab fragments udp and icmp packets; TCP segments carry DF"),
        ("name: a/b\nsteps: []\n", "x.yaml:1:7: error: a scenario name is one word of letters, digits, - _ and . (it names the results folder)"),
        ("steps:\n  - send: c \"abc\n", "x.yaml:2:13: error: this \" is never closed"),
        ("steps:\n  - \"< udp (1)\"\n  - events: IP_RECEIVEPACKET\n    packet: 5\n",
         "x.yaml:3:5: error: packet: 5 is not the line of an earlier inject, expect or flood step (those are on lines 2)"),
        ("hosts: [{name: a}]\nsteps: []\n", "x.yaml:1:8: error: hosts is a list of two or more hosts, joined by klab's wire; one host is host:"),
        ("hosts: [{name: a}, {name: a}]\nsteps: []\n", "x.yaml:1:20: error: duplicate host name 'a' (198.18.0.1 has it)"),
        ("host: {name: a}\nhosts: [{name: a}, {name: b}]\nsteps: []\n",
         "x.yaml:2:1: error: a scenario has host: (one host and the scripted peer) or hosts: (wire mode), not both (host: is on line 1)"),
        ("hosts: [{name: a}, {name: b}]\nwire: {a>c: {loss: 1%}}\nsteps: []\n",
         "x.yaml:2:8: error: unknown direction 'a>c': a direction is FROM>TO between two of the hosts a, b"),
        ("hosts: [{name: a}, {name: b}]\nwire: {loss: 1}\nsteps: []\n", "x.yaml:2:14: error: loss is a percentage like 1% or 0.5%"),
        ("hosts: [{name: a}, {name: b}]\nwire: {delay: 1ms, jitter: 2ms}\nsteps: []\n",
         "x.yaml:2:28: error: impossible time: jitter (2ms) larger than the delay (1ms)"),
        ("hosts: [{name: a}, {name: b}]\nwire: {colour: red}\nsteps: []\n",
         "x.yaml:2:8: error: unknown wire key 'colour'; the wire takes seed, offload, loss, delay, jitter, reorder, duplicate, rate and FROM>TO: {…} per direction"),
        ("wire: {loss: 1%}\nsteps: []\n", "x.yaml:1:7: error: wire: impairs the wire between hosts; it needs hosts: with two or more"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - socket: c tcp\n    host: z\n",
         "x.yaml:4:11: error: unknown host 'z'; this scenario's hosts are a, b"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - \"< udp (1)\"\n",
         "x.yaml:3:5: error: in wire mode the hosts talk to each other: there is no scripted peer to inject or expect packets"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - workload: TCP_MAERTS\n",
         "x.yaml:3:15: error: unknown workload 'TCP_MAERTS'; klab runs TCP_STREAM, TCP_RR, UDP_STREAM, UDP_RR"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - workload: TCP_RR\n    to: b:http\n", "x.yaml:4:9: error: 'http' is not a port"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - workload: TCP_RR\n    count: 5\n    duration: 1s\n",
         "x.yaml:4:5: error: a workload runs for a count or a duration, not both"),
        ("params: {n: 5}\nsteps:\n  - sleep: ${m}ms\n", "x.yaml:3:12: error: unknown parameter 'm': params: has n"),
        ("steps:\n  - socket: c tcp\n  - send: c \"${n\"\n", "x.yaml:3:14: error: this ${ is never closed: a parameter is ${NAME}"),
        ("params: {1n: 5}\nsteps: []\n", "x.yaml:1:10: error: '1n' is not a parameter name: a word of letters, digits and _"),
        ("steps:\n  - socket: c tcp\n  - flood: c\n", "x.yaml:3:12: error: flood takes a socket and a packet count: flood: c 100000"),
        ("steps:\n  - socket: c tcp\n  - flood: c 0\n", "x.yaml:3:14: error: '0' is not a packet count in 1...10000000"),
        ("steps:\n  - socket: c tcp\n  - flood: c 10\n    reader: lazy\n", "x.yaml:4:13: error: reader must be waiting, busy, none, not 'lazy'"),
        ("steps:\n  - socket: c tcp\n  - flood: c 10\n    rate: fast\n",
         "x.yaml:4:11: error: rate (packets per second, 0: back to back) must be a whole number in 0...10000000"),
        ("steps:\n  - socket: c tcp\n  - flood: c 10\n    reader_cpu: first\n",
         "x.yaml:4:17: error: reader_cpu (a CPU number, or any) must be a whole number in 0...4095"),
        ("steps:\n  - flood: c 10\n", "x.yaml:2:5: error: unknown socket 'c': create it first with socket: c tcp (or accept)"),
        ("hosts: [{name: a}, {name: b}]\nsteps:\n  - socket: c tcp\n  - flood: c 10\n",
         "x.yaml:4:5: error: in wire mode the hosts talk to each other: there is no scripted peer to inject or expect packets"),
    ])
    func badInput(_ yaml: String, _ message: String) {
        #expect(error(yaml)?.description == message)
    }

    /// A program that is not installed is no error in the file: the scenario reads, and says
    /// where it names what this machine lacks (klab run fails it alone).
    @Test func missingProgramMakesTheScenarioUnrunnableNotBad() throws {
        let s = try Scenario.parse("steps:\n  - run: [sh, -c, exit]\n  - run: klab-no-such-program --help\n", file: "x.yaml")
        #expect(s.cannotRun.map(\.description)
            == ["x.yaml:3:10: error: program 'klab-no-such-program' is not installed (not found on PATH: \(ProcessInfo.processInfo.environment["PATH"] ?? ""))"])
        #expect(try Scenario.parse("steps:\n  - run: [sh, -c, exit]\n", file: "x.yaml").cannotRun.isEmpty)
    }

    @Test func yamlErrorsAndEmptyFiles() {
        let yaml = error("steps:\n  - socket: [\n")
        #expect(yaml?.location?.line == 3 && yaml?.message.hasPrefix("invalid YAML") == true)
        #expect(error("")?.description == "x.yaml:1:1: error: the file is empty")
        #expect(error("name: t\n")?.description == "x.yaml:1:1: error: a scenario needs 'steps:', a list of steps")
    }

    @Test func duplicateScenarioNamesAcrossFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("klab-dup-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "name: same\nsteps: []\n".write(toFile: "\(dir)/a.yaml", atomically: false, encoding: .utf8)
        try "about: x\nname: same\nsteps: []\n".write(toFile: "\(dir)/b.yaml", atomically: false, encoding: .utf8)
        #expect(throws: ScenarioError.self) { try Scenario.load(all: ["\(dir)/a.yaml", "\(dir)/b.yaml"]) }
        do { _ = try Scenario.load(all: ["\(dir)/a.yaml", "\(dir)/b.yaml"]) } catch {
            #expect(error.description == "\(dir)/b.yaml:2:7: error: duplicate scenario name 'same': \(dir)/a.yaml has it too (each gets a results folder by name)")
        }
    }

    @Test func callsAndResults() throws {
        let s = try Scenario.parse("""
            steps:
              - socket: c tcp nonblock
              - setsockopt: c TCP_CONGESTION reno
              - setsockopt: c SO_RCVBUF 4096
              - connect: c 198.18.0.2:40000
                result: EINPROGRESS
              - send: c "a b\\x00" MSG_OOB
              - recv: c 10 MSG_PEEK|MSG_DONTWAIT
                result: EAGAIN
              - read: c "hi"
              - shutdown: c SHUT_WR
              - "+0.25 > F. 1:1(0) ack 1 <...>"
              - "< R 1:1(0)"
              - events: SOCKET_CREATE "SOCKET_*"
                sock: c
                level: connection
              - run: [true]
                status: any
              - run: sleep 5
                background: true
                name: snooze
              - stop: snooze
            """, file: "y")
        #expect(s.steps.count == 14)
        guard case .socket("c", .tcp, true) = s.steps[0].action,
              case .setsockopt("c", let cc, .string("reno")) = s.steps[1].action, cc.name == "TCP_CONGESTION",
              case .setsockopt("c", let rb, .int(4096)) = s.steps[2].action, rb.name == "SO_RCVBUF",
              case .connect("c", Endpoint(address: "198.18.0.2", port: 40000)) = s.steps[3].action,
              case .send(let send) = s.steps[4].action, case .receive(let recv) = s.steps[5].action,
              case .receive(let read) = s.steps[6].action, case .shutdown("c", Int32(SHUT_WR)) = s.steps[7].action,
              case .expect(.tcp(let fin), 1000) = s.steps[8].action, case .inject(.tcp(let rst)) = s.steps[9].action,
              case .events(let ev) = s.steps[10].action, case .program(let t) = s.steps[11].action,
              case .program(let bg) = s.steps[12].action, case .stop("snooze") = s.steps[13].action
        else { Issue.record("steps read wrong: \(s.steps.map(\.text))"); return }
        #expect(s.steps[3].result == .errno(EINPROGRESS, "EINPROGRESS"))
        #expect(send.bytes == [97, 32, 98, 0] && send.flags == Int32(MSG_OOB) && send.verb == "send")
        #expect(recv.count == 10 && recv.flags == Int32(MSG_PEEK) | Int32(MSG_DONTWAIT) && s.steps[5].result == .errno(EAGAIN, "EAGAIN"))
        #expect(read.data == Array("hi".utf8) && read.count == 2 && read.verb == "read")
        #expect(fin.flags == [.fin, .ack] && fin.options == nil)
        #expect(s.steps[8].timing == Timing(base: .previous, offsetNs: 250_000_000, toleranceNs: Timing.defaultToleranceNs))
        #expect(rst.flags == .rst)
        #expect(ev.patterns.map(\.glob) == ["SOCKET_CREATE", "SOCKET_*"] && ev.sock == "c" && ev.level == .connection)
        #expect(t.status == nil && t.path?.hasSuffix("/true") == true && !t.background)
        #expect(bg.name == "snooze" && bg.background && bg.argv == ["sleep", "5"] && bg.status == 0)
    }

    @Test func wireModeAndWorkloads() throws {
        let s = try Scenario.parse("""
            hosts:
              - {name: a}
              - {name: b, address: 198.18.1.9/24, mtu: 9000}
            wire:
              seed: 9
              loss: 1%
              b>a: {delay: 5ms, jitter: 1ms, rate: 10Mbit, duplicate: 0.5%, reorder: 2%}
            steps:
              - socket: s udp
                host: b
              - run: [ping, -c, "1", 198.18.1.9]
                host: a
                output: "1 received"
              - workload: UDP_RR
                from: a
                to: b:7000
                size: 64
                count: 10
            """, file: "w")
        #expect(s.wireMode && s.hosts.map(\.name) == ["a", "b"] && s.hosts[0].address == "198.18.0.1")
        #expect(s.hosts[1].address == "198.18.1.9" && s.hosts[1].mtu == 9000 && s.host.name == "a")
        #expect(s.wire.seed == 9 && s.wire.impairment(from: "a", to: "b") == Impairment(loss: 0.01))
        #expect(s.wire.impairment(from: "b", to: "a") == Impairment(loss: 0.01, duplicate: 0.005, reorder: 0.02, delayNs: 5_000_000, jitterNs: 1_000_000, rate: 10_000_000))
        #expect(s.steps[0].host == "b")
        guard case .program(let p) = s.steps[1].action, case .workload(let w) = s.steps[2].action else { Issue.record("steps"); return }
        #expect(p.output == "1 received" && s.steps[1].host == "a")
        #expect(w.kind == .UDP_RR && w.from == "a" && w.to == "b" && w.port == 7000 && w.size == 64 && w.count == 10)
    }

    /// `params:` and `${NAME}`; `--set` overrides a value, and must name a parameter.
    @Test func parameters() throws {
        let yaml = "name: p\nparams: {count: 100, reader: busy}\nsteps:\n  - socket: c tcp\n  - flood: c ${count}\n    reader: ${reader}\n    rate: 1${count}\n"
        let s = try Scenario.parse(yaml, file: "p.yaml")
        #expect(s.params.map(\.name) == ["count", "reader"] && s.params.map(\.value) == ["100", "busy"])
        guard case .flood(let f) = s.steps[1].action else { Issue.record("not a flood: \(s.steps[1].text)"); return }
        #expect(f.count == 100 && f.reader == .busy && f.rate == 1100 && f.size == nil && f.injectCPU == nil)
        #expect(s.steps[1].text == "flood c 100")
        let t = try Scenario.parse(yaml, file: "p.yaml", set: ["count": "7"])
        guard case .flood(let g) = t.steps[1].action else { Issue.record("not a flood"); return }
        #expect(g.count == 7 && g.rate == 17 && t.params.first?.value == "7")
        do {
            _ = try Scenario.parse(yaml, file: "p.yaml", set: ["cuont": "7"])
            Issue.record("an unknown --set was taken")
        } catch {
            #expect(error.description == "p.yaml:2:1: error: unknown parameter 'cuont' (--set cuont=…): this scenario's params are count, reader")
        }
        do {
            _ = try Scenario.parse("steps: []\n", file: "q.yaml", set: ["count": "7"])
            Issue.record("an unknown --set was taken")
        } catch {
            #expect(error.description == "q.yaml:1:1: error: unknown parameter 'count' (--set count=…): this scenario has no params:")
        }
        // Several files: a parameter applies where it is declared, and must be declared somewhere.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("klab-params-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try yaml.write(toFile: "\(dir)/p.yaml", atomically: false, encoding: .utf8)
        try "name: q\nsteps: []\n".write(toFile: "\(dir)/q.yaml", atomically: false, encoding: .utf8)
        let both = try Scenario.load(all: ["\(dir)/p.yaml", "\(dir)/q.yaml"], set: ["count": "9"])
        #expect(both[0].params.first?.value == "9" && both[1].params.isEmpty)
        do {
            _ = try Scenario.load(all: ["\(dir)/p.yaml", "\(dir)/q.yaml"], set: ["size": "9"])
            Issue.record("an unknown --set was taken")
        } catch {
            #expect(error.description == "\(dir)/p.yaml:2:1: error: unknown parameter 'size' (--set size=…): none of these scenarios has it in params:")
        }
    }

    @Test func floodKeys() throws {
        let s = try Scenario.parse("""
            steps:
              - socket: u udp
              - flood: u 5
                rate: 0
                reader: none
                size: 100
                read_size: 27
                timeout: 5s
                inject_cpu: 0
                reader_cpu: any
              - events: IP_RECEIVEPACKET
                packet: 3
            """, file: "f")
        guard case .flood(let f) = s.steps[1].action else { Issue.record("not a flood"); return }
        #expect(f.sock == "u" && f.count == 5 && f.rate == 0 && f.reader == FloodSpec.Reader.none && f.size == 100)
        #expect(f.readSize == 27 && f.timeoutNs == 5_000_000_000 && f.injectCPU == 0 && f.readerCPU == nil)
    }

    @Test func timingKeys() throws {
        let s = try Scenario.parse("timeout: 5s\nsteps:\n  - sleep: 1ms\n    at: 0.5s\n    tolerance: 2ms\n  - sleep: 1ms\n    after: 250us\n", file: "z")
        #expect(s.timeoutNs == 5_000_000_000)
        #expect(s.steps[0].timing == Timing(base: .start, offsetNs: 500_000_000, toleranceNs: 2_000_000))
        #expect(s.steps[1].timing == Timing(base: .previous, offsetNs: 250_000, toleranceNs: Timing.defaultToleranceNs))
        #expect(try Scenario.parse("steps: []\n", file: "d").timeoutNs == Scenario.defaultTimeoutNs)
    }
}

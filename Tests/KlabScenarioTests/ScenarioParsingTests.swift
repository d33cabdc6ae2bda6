import Foundation
import KlabPacket
import Testing

@testable import KlabScenario

struct ScenarioParsingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test(arguments: ["icmp-echo", "tcp-handshake", "udp-echo"])
    func shippedScenariosParse(_ name: String) throws {
        let s = try Scenario.load(Self.root.appendingPathComponent("lab/scenarios/\(name).yaml").path)
        #expect(s.name == name)
        #expect(!s.steps.isEmpty)
        #expect(Scenario.labPrefix.contains(s.host.address) && Scenario.labPrefix.contains(s.peer))
    }

    @Test func packetdrillTCP() throws {
        let at = SourceLocation(file: "t", line: 1, column: 1)
        let syn = try PacketNotation.parse("S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 7>", at: at)
        #expect(syn == .tcp(flags: .syn, start: 0, end: 0, ack: nil, window: 65535,
                            options: [.mss(1460), .sackPermitted, .timestamp(val: 1, ecr: 0), .nop, .windowScale(7)]))
        #expect(try PacketNotation.parse("P. 1:101(100) ack 1", at: at)
                == .tcp(flags: [.psh, .ack], start: 1, end: 101, ack: 1, window: nil, options: []))
        #expect(try PacketNotation.parse(". 1:1(0) ack 1 win 257 <...>", at: at)
                == .tcp(flags: .ack, start: 1, end: 1, ack: 1, window: 257, options: nil))
        #expect(try PacketNotation.parse("R 0:0(0)", at: at) == .tcp(flags: .rst, start: 0, end: 0, ack: nil, window: nil, options: []))
        #expect(try PacketNotation.parse("udp (100)", at: at) == .udp(length: 100))
        #expect(try PacketNotation.parse("icmp echo_request", at: at) == .icmpEcho(reply: false, id: nil, sequence: nil, length: 56))
        #expect(try PacketNotation.parse("icmp echo_reply id 7 seq 2 (8)", at: at) == .icmpEcho(reply: true, id: 7, sequence: 2, length: 8))
    }

    func error(_ yaml: String) -> ScenarioError? {
        do {
            _ = try Scenario.parse(yaml, file: "x.yaml")
            return nil
        } catch { return error }
    }

    @Test func errorsPointAtLineAndColumn() {
        let bad = error("name: t\nsteps:\n  - inject: S 0:0(1)\n")
        #expect(bad?.description == "x.yaml:3:15: error: 0:0 holds 0 bytes, not 1")
        let opt = error("steps:\n  - expect: S. 0:0(0) <mss 1460,frob>\n")
        #expect(opt?.location?.line == 2 && opt?.message.contains("unknown TCP option 'frob'") == true)
        #expect(opt?.location?.column == 33)
        let quoted = error("steps:\n  - expect: \"S. 0:0(0) <frob>\"\n")
        #expect(quoted?.location?.column == 25)
        let key = error("name: t\ncolour: red\nsteps: []\n")
        #expect(key?.description.hasPrefix("x.yaml:2:1: error: unknown key 'colour'") == true)
        let outside = error("host:\n  address: 10.0.0.1/24\nsteps: []\n")
        #expect(outside?.location?.line == 2 && outside?.message.contains("outside the lab prefix") == true)
        let yaml = error("steps:\n  - socket: [\n")
        #expect(yaml?.location?.line == 3 && yaml?.message.hasPrefix("invalid YAML") == true)
        let verb = error("steps:\n  - frobnicate: x\n")
        #expect(verb?.location?.line == 2 && verb?.message.contains("a step needs one of") == true)
        let call = error("steps:\n  - bind: l 8080\n")
        #expect(call?.message.contains("must be ADDRESS:PORT") == true)
        #expect(error("") != nil)
    }

    @Test func resultsAndCalls() throws {
        let s = try Scenario.parse("steps:\n  - socket: l tcp\n  - connect2: x\n    result: 1\n".replacingOccurrences(of: "  - connect2: x\n    result: 1\n", with: "  - bind: l 0.0.0.0:80\n    result: EADDRINUSE\n"), file: "y")
        #expect(s.steps.count == 2)
        #expect(s.steps[1].result == .errno(EADDRINUSE, "EADDRINUSE"))
        guard case .bind(let sock, let a, let p) = s.steps[1].action else { Issue.record("not a bind"); return }
        #expect(sock == "l" && a == IPv4Address(0, 0, 0, 0) && p == 80)
    }
}

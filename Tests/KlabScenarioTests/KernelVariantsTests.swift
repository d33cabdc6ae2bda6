import Foundation
import KlabPacket
import Testing

@testable import KlabScenario

/// What a scenario meant for every kernel says where kernels differ: any window scale, a push
/// that may or may not be set, and events steps that apply where their events' sites are.
struct KernelVariantsTests {
    let at = SourceLocation(file: "t", line: 1, column: 1)

    @Test func windowScaleWildcardAndOptionalPush() throws {
        guard case .tcp(let syn) = try PacketNotation.parse("S 0:0(0) <mss 1460,nop,wscale *>", at: at) else { Issue.record("not TCP"); return }
        #expect(syn.options == [.mss(1460), .nop, .windowScale(PacketNotation.anyWindowScale)])
        #expect(syn.description == "S 0:0(0) <mss 1460,nop,wscale *>")
        guard case .tcp(let seg) = try PacketNotation.parse("P?. 1:1001(1000) ack 1 <...>", at: at) else { Issue.record("not TCP"); return }
        #expect(seg.flags == [.ack] && seg.optional == [.psh] && seg.description == "P?. 1:1001(1000) ack 1 <...>")
        #expect(throws: ScenarioError.self) { try PacketNotation.parse("S 0:0(0) <wscale x>", at: at) }
    }

    @Test func sameOptionsTakesAnyWindowScale() throws {
        let play = Play.self
        let want: [TCPOption] = [.mss(1460), .timestamp(val: 0, ecr: 0), .windowScale(PacketNotation.anyWindowScale)]
        #expect(play.sameOptions(want, [.mss(1460), .timestamp(val: 77, ecr: 0), .windowScale(7)]))
        #expect(play.sameOptions(want, [.mss(1460), .timestamp(val: 1, ecr: 2), .windowScale(10)]))
        #expect(!play.sameOptions(want, [.mss(1460), .timestamp(val: 1, ecr: 2)]), "a missing window scale is still missing")
        #expect(!play.sameOptions([.windowScale(7)], [.windowScale(10)]))
    }

    @Test func eventsStepsNameTheirSites() throws {
        let s = try Scenario.parse("""
            name: t
            steps:
              - socket: u udp
              - events: UDP_SEND IP_SENDBUFFER
                sock: u
                sites: {UDP_SEND: udp_sendmsg}
            """, file: "t.yaml")
        guard case .events(let e) = s.steps[1].action else { Issue.record("not an events step"); return }
        #expect(e.sites.map(\.event) == ["UDP_SEND"] && e.sites.map(\.site) == ["udp_sendmsg"])
        // A site no event has, and an unknown event, are errors at their place in the file.
        for (yaml, message) in [("{UDP_SEND: no_such_function}", "none of UDP_SEND's sites has 'no_such_function'"),
                                ("{NOT_AN_EVENT: x}", "no schema event is named 'NOT_AN_EVENT'")] {
            do {
                _ = try Scenario.parse("name: t\nsteps:\n  - events: UDP_SEND\n    sites: \(yaml)\n", file: "t.yaml")
                Issue.record("accepted \(yaml)")
            } catch {
                #expect("\(error)".contains("t.yaml:4:") && "\(error)".contains(message), "\(error)")
            }
        }
    }
}

import KlabSchema
import Testing

@testable import KlabTracer

/// Levels, toggles and the BPF objects' programs; no root needed.
struct SelectionTests {
    func names(_ c: TracerConfig) throws -> Set<String> { Set(try c.events().map(\.name)) }

    @Test func levelsSelectCumulatively() throws {
        let socket = try names(TracerConfig(level: .socket))
        #expect(socket == Set(Schema.events.filter { $0.level == .socket }.map(\.name)))
        #expect(!socket.contains("TCP_STATE"))
        let ip = try names(TracerConfig(level: .ip))
        #expect(ip.contains("IP_RECEIVEPACKET") && ip.contains("TCP_SENDPACKET") && ip.contains("TCP_STATE"))
        #expect(!ip.contains("SOCKET_ASSIGNADDR"))
    }

    @Test func togglesApplyInOrder() throws {
        let c = TracerConfig(level: .connection, toggles: ["+IP_SENDPACKET", "-SOCKET_*", "SOCKET_BIND", "+tcp_send*"])
        let n = try names(c)
        #expect(n.contains("IP_SENDBUFFER"))
        #expect(n.contains("SOCKET_BIND") && !n.contains("SOCKET_CREATE") && !n.contains("SOCKET_CONNECT"))
        #expect(n.isSuperset(of: ["TCP_SEND", "TCP_SENDSYN", "TCP_SENDACK", "TCP_SENDSYNACK", "TCP_SENDPACKET"]))
        #expect(throws: TracerError.self) { try TracerConfig(toggles: ["NOT_AN_EVENT"]).events() }
    }

    @Test func globs() {
        #expect(glob("TCP_*", "TCP_SEND") && glob("*PENDINGFRAMES", "UDP_PUSHPENDINGFRAMES") && glob("ip_?ENDBUFFER", "IP_SENDBUFFER"))
        #expect(!glob("TCP_*", "UDP_SEND") && !glob("TCP", "TCP_SEND"))
    }

    /// The catalog and the compiled BPF objects name the same programs.
    @Test func everyCatalogProbeIsABPFProgram() throws {
        let programs = try BPFObject.programNames()
        let catalog = Set(Schema.probes.map(\.program))
        #expect(catalog.subtracting(programs).isEmpty, "in the catalog but not in BPF: \(catalog.subtracting(programs).sorted())")
        #expect(programs.subtracting(catalog).isEmpty, "in BPF but not in the catalog: \(programs.subtracting(catalog).sorted())")
    }
}

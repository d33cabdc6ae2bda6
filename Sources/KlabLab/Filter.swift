import CLibpcap

public struct FilterError: Error, CustomStringConvertible { public let description: String }

/// A pcap-filter expression (as tcpdump takes), compiled by libpcap for raw IPv4 packets.
public final class PacketFilter: @unchecked Sendable {
    private var program = pcap_bpf_program()

    public init(_ expression: String) throws {
        guard let dead = pcap_open_dead(DLT_RAW, 65535) else { throw LabError("pcap_open_dead", errno: 12) }
        defer { pcap_close(dead) }
        if pcap_compile(dead, &program, expression, 1, PCAP_NETMASK_UNKNOWN) != 0 {
            throw FilterError(description: "bad pcap-filter expression '\(expression)': \(String(cString: pcap_geterr(dead)))")
        }
    }

    deinit { pcap_freecode(&program) }

    public func matches(_ bytes: [UInt8]) -> Bool {
        var h = pcap_pkthdr()
        h.caplen = UInt32(bytes.count)
        h.len = UInt32(bytes.count)
        return bytes.withUnsafeBufferPointer { pcap_offline_filter(&program, &h, $0.baseAddress) != 0 }
    }
}

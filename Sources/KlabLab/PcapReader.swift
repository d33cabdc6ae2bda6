import CLibpcap

/// Reads a pcap file (as klab writes it) with libpcap: frames in file order.
public enum PcapReader {
    public static func frames(_ path: String) throws -> [[UInt8]] {
        var errbuf = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE))
        guard let p = pcap_open_offline_with_tstamp_precision(path, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errbuf) else {
            throw FilterError(description: "cannot read \(path): \(String(decoding: errbuf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
        }
        defer { pcap_close(p) }
        var out: [[UInt8]] = []
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        while pcap_next_ex(p, &header, &data) == 1, let h = header, let d = data {
            out.append(Array(UnsafeBufferPointer(start: d, count: Int(h.pointee.caplen))))
        }
        return out
    }
}

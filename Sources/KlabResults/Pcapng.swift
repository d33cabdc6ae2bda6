import Foundation

/// capture.pcapng: the capture with the kernel events joined to each packet, in standard
/// pcapng fields only (the pcapng specification, draft-ietf-opsawg-pcapng), so Wireshark and
/// tshark show them without a plugin:
/// - the Section Header Block's comment holds the run's header (kernel, sites, clocks);
/// - one Interface Description Block per lab link: LINKTYPE_RAW, `if_name` the TUN and its
///   host, `if_tsresol` 9 (nanoseconds);
/// - one Enhanced Packet Block per frame, in capture order: `epb_flags` gives the direction
///   (inbound: klab wrote it into the host; outbound: the host sent it), `epb_packetid` the
///   packet id (the same at both ends of a wire hop), and an `opt_comment` lists the kernel
///   events joined to the packet in order (name, site, CPU, task, offset from the wire time),
///   and what the wire did to it.
/// Written whole or not at all: to a temporary name, renamed by `close`.
public final class PcapngWriter {
    public var path: String { file.path }
    private let file: OutputFile
    private var buffer: [UInt8] = []

    /// One event as the packet's comment lists it.
    public struct Event {
        public let name: String, site: String, cpu: UInt16, task: String, fromWireNs: Int64
        public init(name: String, site: String, cpu: UInt16, task: String, fromWireNs: Int64) {
            (self.name, self.site, self.cpu, self.task, self.fromWireNs) = (name, site, cpu, task, fromWireNs)
        }
    }

    /// - Parameters:
    ///   - comment: the section's comment (the run's header, as text).
    ///   - interfaces: per link, its name (the TUN and its host) and description.
    public init(path: String, comment: String, interfaces: [(name: String, description: String)], snaplen: Int) throws {
        file = try OutputFile(path, whole: true)
        // Section Header Block: byte-order magic, version 1.0, section length unknown (-1).
        var body: [UInt8] = []
        put32(&body, 0x1A2B_3C4D)
        put16(&body, 1)
        put16(&body, 0)
        put64(&body, UInt64.max)
        option(&body, 1, Array(comment.utf8))            // opt_comment
        option(&body, 4, Array("klab".utf8))             // shb_userappl
        end(&body)
        block(0x0A0D_0D0A, body)
        for i in interfaces {
            var b: [UInt8] = []
            put16(&b, 101)                                // LINKTYPE_RAW
            put16(&b, 0)
            put32(&b, UInt32(snaplen))
            option(&b, 2, Array(i.name.utf8))            // if_name
            option(&b, 3, Array(i.description.utf8))     // if_description
            option(&b, 9, [9])                           // if_tsresol: 10^-9 s
            end(&b)
            block(1, b)
        }
    }

    /// One Enhanced Packet Block.
    public func packet(interface: Int, realtimeNs: UInt64, length: Int, bytes: [UInt8], inbound: Bool, packetID: UInt64,
                       events: [Event], note: String?) throws {
        var b: [UInt8] = []
        put32(&b, UInt32(interface))
        put32(&b, UInt32(realtimeNs >> 32))
        put32(&b, UInt32(realtimeNs & 0xffff_ffff))
        put32(&b, UInt32(bytes.count))
        put32(&b, UInt32(length))
        b += bytes
        pad(&b)
        var flags: [UInt8] = []
        put32(&flags, inbound ? 1 : 2)                    // bits 0-1: 01 inbound, 10 outbound
        option(&b, 2, flags)                              // epb_flags
        var id: [UInt8] = []
        put64(&id, packetID)
        option(&b, 5, id)                                 // epb_packetid
        var lines = events.map { e in
            "\(e.name) [\(e.site)] cpu\(e.cpu) \(e.task) \(String(format: "%+.1f", Double(e.fromWireNs) / 1000)) µs"
        }
        if let note { lines.insert(note, at: 0) }
        if !lines.isEmpty { option(&b, 1, Array(lines.joined(separator: "\n").utf8)) }  // opt_comment
        end(&b)
        block(6, b)
        if buffer.count >= 1 << 16 { try flush() }
    }

    /// Writes what is left and gives the file its name.
    public func close() throws {
        try flush()
        try file.close()
    }

    private func flush() throws {
        try file.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    // A block: type, total length, body (padded to 32 bits), total length again.
    private func block(_ type: UInt32, _ body: [UInt8]) {
        let total = UInt32(12 + body.count)
        put32(&buffer, type)
        put32(&buffer, total)
        buffer += body
        put32(&buffer, total)
    }
    private func option(_ b: inout [UInt8], _ code: UInt16, _ value: [UInt8]) {
        put16(&b, code)
        put16(&b, UInt16(value.count))
        b += value
        pad(&b)
    }
    private func end(_ b: inout [UInt8]) { put32(&b, 0) }  // opt_endofopt
    private func pad(_ b: inout [UInt8]) { while b.count % 4 != 0 { b.append(0) } }
    private func put16(_ a: inout [UInt8], _ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { a.append(contentsOf: $0) } }
    private func put32(_ a: inout [UInt8], _ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { a.append(contentsOf: $0) } }
    private func put64(_ a: inout [UInt8], _ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { a.append(contentsOf: $0) } }
}

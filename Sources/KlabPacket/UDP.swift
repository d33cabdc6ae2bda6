/// The UDP header (RFC 768).
///
/// `length` and `checksum` are as parsed. `serialize` writes the real length
/// and computes the checksum over the IPv4 pseudo-header, header and payload,
/// sending 0xFFFF when the sum comes out 0 (0 on the wire means "no checksum").
/// Exception: a fragment carries only part of the datagram, so both fields are
/// written as stored (they describe the whole datagram).
public struct UDPHeader: Hashable, Sendable {
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// As parsed: header + data of the whole datagram.
    public var length: UInt16
    /// As parsed; 0 means the sender computed none.
    public var checksum: UInt16

    public init(sourcePort: UInt16, destinationPort: UInt16, length: UInt16 = 0, checksum: UInt16 = 0) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.length = length
        self.checksum = checksum
    }

    public static let headerLength = 8

    /// Reads the 8-byte header (zero-filled past the end when `lenient`).
    static func parse(_ r: inout ByteReader, lenient: Bool = false) throws(PacketError) -> UDPHeader {
        if !lenient { try r.require(8, "UDP header") }
        return UDPHeader(sourcePort: r.u16(), destinationPort: r.u16(), length: r.u16(), checksum: r.u16())
    }

    func write(_ w: inout ByteWriter, length: UInt16, checksum: UInt16) {
        w.u16(sourcePort)
        w.u16(destinationPort)
        w.u16(length)
        w.u16(checksum)
    }
}

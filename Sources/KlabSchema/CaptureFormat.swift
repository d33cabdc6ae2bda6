/// The capture's per-frame facts that a pcap has no room for, as klab's recorder writes them
/// into `capture.frames` (16 bytes per frame, in the pcap's frame order): link (u8), tag
/// (u8, `FrameTag`), fate (u8, `Fate`), 5 reserved bytes, packet id (u64 little-endian: the
/// same where a packet left one host and where klab delivered it to the next).
public enum FrameTag {
    public static let recordSize = 16
    /// The packet went into the link's host (klab wrote it); clear: the host sent it (klab read it).
    public static let intoHost: UInt8 = 0x80
    /// A second delivery of the same packet, made by the wire's duplication.
    public static let duplicate: UInt8 = 0x01
    /// A delivery of a packet another lab host sent (wire mode): the capture holds it twice,
    /// where it left and here. Count it once.
    public static let forwarded: UInt8 = 0x02
}

/// What became of a packet klab took off a link or put on one.
public enum Fate: UInt8, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// Sent: klab read it from the host's TUN (and, in wire mode, forwarded it).
    /// Delivered: klab wrote it into the host's TUN.
    case passed = 0
    /// The wire's impairment dropped it (loss).
    case lost = 1
    /// No lab host has its destination address.
    case undeliverable = 2
    /// Writing it into the receiving TUN failed.
    case refused = 3

    public var description: String {
        switch self {
        case .passed: "passed"
        case .lost: "dropped by the wire (loss)"
        case .undeliverable: "no lab host has its destination"
        case .refused: "the receiving TUN refused the write"
        }
    }
}


/// An IPv4 address (RFC 791), held as a host-order `UInt32` so that ordering,
/// masking and arithmetic ("the next host") are plain integer operations.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The address in host byte order: `198.18.0.1` is `0xC612_0001`.
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        rawValue = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// From a network-order word, e.g. `sockaddr_in.sin_addr.s_addr`.
    public init(networkOrder value: UInt32) { rawValue = UInt32(bigEndian: value) }

    /// From exactly four bytes as they appear on the wire; `nil` for any other count.
    public init?(networkOrder bytes: some Collection<UInt8>) {
        guard bytes.count == 4 else { return nil }
        rawValue = bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Parses strict dotted-quad notation ("198.18.0.1"), like `inet_pton`:
    /// exactly four decimal parts 0...255, no leading zeros (which `inet_aton`
    /// would read as octal — an ambiguity a lab config should not have).
    public init?(_ dotted: some StringProtocol) {
        var value: UInt32 = 0, part: UInt32 = 0, digits = 0, parts = 0
        for c in dotted.utf8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if digits == 1 && part == 0 { return nil }  // leading zero
                part = part * 10 + UInt32(c - UInt8(ascii: "0"))
                digits += 1
                guard digits <= 3, part <= 255 else { return nil }
            case UInt8(ascii: "."):
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1; part = 0; digits = 0
            default:
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        rawValue = value << 8 | part
    }

    /// Traps on an invalid literal: a literal is source code, so a typo is a programmer error.
    public init(stringLiteral value: String) {
        guard let a = IPv4Address(value) else { preconditionFailure("invalid IPv4 address literal \"\(value)\"") }
        self = a
    }

    /// The address as a network-order word, for `sockaddr_in.sin_addr.s_addr`.
    public var networkOrder: UInt32 { rawValue.bigEndian }

    /// The four bytes in wire order.
    public var bytes: [UInt8] { [UInt8(rawValue >> 24), UInt8(truncatingIfNeeded: rawValue >> 16),
                                 UInt8(truncatingIfNeeded: rawValue >> 8), UInt8(truncatingIfNeeded: rawValue)] }

    public static let any = IPv4Address(rawValue: 0)
    public static let broadcast = IPv4Address(rawValue: .max)
    public static let loopback = IPv4Address(127, 0, 0, 1)

    public static func < (l: IPv4Address, r: IPv4Address) -> Bool { l.rawValue < r.rawValue }

    public var description: String {
        "\(rawValue >> 24).\(rawValue >> 16 & 0xFF).\(rawValue >> 8 & 0xFF).\(rawValue & 0xFF)"
    }
}

/// An address with a prefix length ("198.18.0.0/15", RFC 4632 CIDR notation).
/// `address` is kept as written, so "198.18.0.1/15" can describe an interface
/// address; `network` gives the masked base.
public struct IPv4Prefix: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public var address: IPv4Address
    /// 0...32.
    public var length: Int

    /// `nil` unless `length` is in 0...32.
    public init?(address: IPv4Address, length: Int) {
        guard (0...32).contains(length) else { return nil }
        self.address = address
        self.length = length
    }

    /// Parses "a.b.c.d/len"; a bare address means /32.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let addr = IPv4Address(parts[0]) else { return nil }
        var len = 32
        if parts.count == 2 {
            guard parts[1].utf8.count <= 2, parts[1].utf8.allSatisfy({ (48...57).contains($0) }),
                  let l = Int(parts[1]) else { return nil }
            len = l
        }
        self.init(address: addr, length: len)
    }

    public init(stringLiteral value: String) {
        guard let p = IPv4Prefix(value) else { preconditionFailure("invalid IPv4 prefix literal \"\(value)\"") }
        self = p
    }

    /// The netmask, e.g. 255.254.0.0 for /15.
    public var mask: IPv4Address { IPv4Address(rawValue: length == 0 ? 0 : UInt32.max << (32 - UInt32(length))) }
    public var network: IPv4Address { IPv4Address(rawValue: address.rawValue & mask.rawValue) }
    public var broadcast: IPv4Address { IPv4Address(rawValue: network.rawValue | ~mask.rawValue) }
    /// Number of addresses covered (2^(32-length)).
    public var size: UInt64 { 1 << UInt64(32 - length) }

    public func contains(_ a: IPv4Address) -> Bool { a.rawValue & mask.rawValue == network.rawValue }

    /// The n-th address of the prefix: `host(1)` of 198.18.0.0/15 is 198.18.0.1.
    /// `n` must fit in the host bits (a prefix is finite; wrapping would silently alias).
    public func host(_ n: UInt32) -> IPv4Address {
        precondition(UInt64(n) < size, "host \(n) is outside \(self)")
        return IPv4Address(rawValue: network.rawValue | n)
    }

    public var description: String { "\(address)/\(length)" }
}

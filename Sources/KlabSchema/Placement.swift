/// Where an event must sit relative to the wire and to the other layers: the placement rules
/// `klab check` judges every occurrence against. Each event declares Klogger's rules next to
/// its sites in the catalog (Schema.swift); a site whose documented placement differs (an
/// approximate one, or one that sees another packet) declares its own, and its events are
/// judged against those.
public enum Rule: Sendable, Hashable, CustomStringConvertible {
    /// The event's packet leaves the host after it: event ≤ that packet on the wire, sent by
    /// the event's host.
    case beforeSent
    /// The event's packet reached the host before it: that packet on the wire, sent to the
    /// event's host, ≤ event.
    case afterReceived
    /// On the same packet (the same wire frame, or the same skb), no earlier than these events.
    case afterOnPacket([String])
    /// On the same socket, the n-th occurrence is no later than the n-th of these events
    /// (whichever the socket has).
    case beforeOnSocket([String])
    /// On the same socket, the n-th occurrence is no earlier than the n-th of these events.
    case afterOnSocket([String])
    /// On its TCP flow, after the first `after` segment and before the first `before`
    /// segment that follows it on the wire.
    case onFlow(after: Segment?, before: Segment?)
    /// CONNECTION_HANDSHAKE: after the SYN-ACK; before the final ACK when the host sends it
    /// (active open), after it and before any other segment of the flow when the host
    /// receives it (passive open).
    case handshake

    public var description: String {
        switch self {
        case .beforeSent: "before its packet leaves the host"
        case .afterReceived: "after its packet reaches the host"
        case .afterOnPacket(let e): "after \(e.joined(separator: "/")) on the same packet"
        case .beforeOnSocket(let e): "before \(e.joined(separator: "/")) on the same socket (n-th with n-th)"
        case .afterOnSocket(let e): "after \(e.joined(separator: "/")) on the same socket (n-th with n-th)"
        case .onFlow(let a, let b):
            [a.map { "after the \($0) on the wire" }, b.map { "before the \($0) on the wire" }].compactMap { $0 }.joined(separator: ", ")
        case .handshake: "after the SYN-ACK; before the final ACK sent, or right after the final ACK received"
        }
    }

    /// The other events a rule needs logged to be judged.
    public var partners: [String] {
        switch self {
        case .afterOnPacket(let e), .beforeOnSocket(let e), .afterOnSocket(let e): e
        default: []
        }
    }
}

/// A TCP segment of a flow's handshake, by its flags and its direction as the event's host
/// sees it.
public struct Segment: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable { case syn = "SYN", synAck = "SYN-ACK", finalAck = "final ACK" }
    public let kind: Kind
    /// true: sent to the host; false: sent by it.
    public let toHost: Bool

    public static func syn(toHost: Bool) -> Segment { Segment(kind: .syn, toHost: toHost) }
    public static func synAck(toHost: Bool) -> Segment { Segment(kind: .synAck, toHost: toHost) }
    public static func finalAck(toHost: Bool) -> Segment { Segment(kind: .finalAck, toHost: toHost) }

    public var description: String { "\(kind.rawValue) \(toHost ? "to" : "from") the host" }
}

extension EventSpec {
    /// The rules an occurrence logged from `site` is judged against.
    public func rules(for site: Site) -> [Rule] { site.rules ?? rules }

    /// The site of this event with this name (`Site.name`), if any.
    public func site(named name: String?) -> Site? { sites.first { $0.name == name } }

    /// The site of this event a probe belongs to, if any.
    public func site(of probe: UInt16) -> Site? { sites.first { $0.probes.contains { $0.id == probe } } }
}

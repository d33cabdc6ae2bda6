/// The catalog's events that klab's own code names, each looked up once by its catalog name
/// here, in the catalog's module: code outside it uses these, never a string. `Schema.problems()`
/// (run when klab starts, and by a unit test) looks every one of them up, so a name the catalog
/// lacks stops klab before anything runs, never in the middle of a run.
extension Schema {
    public static let socketCreate = named("SOCKET_CREATE")
    public static let socketClose = named("SOCKET_CLOSE")
    public static let socketReceive = named("SOCKET_RECEIVE")
    public static let socketAccept = named("SOCKET_ACCEPT")
    public static let tcpSend = named("TCP_SEND")
    public static let tcpReceive = named("TCP_RECEIVE")
    public static let tcpSendPacket = named("TCP_SENDPACKET")
    public static let tcpReceivePacket = named("TCP_RECEIVEPACKET")
    public static let tcpSendAck = named("TCP_SENDACK")
    public static let tcpRecvAck = named("TCP_RECVACK")
    public static let udpReceive = named("UDP_RECEIVE")
    public static let udpQueueSocketBuffer = named("UDP_QUEUE_SOCKETBUFFER")
    public static let icmpSend = named("ICMP_SEND")
    public static let icmpReceive = named("ICMP_RECEIVE")
    public static let icmpReply = named("ICMP_REPLY")
    public static let ipSendBuffer = named("IP_SENDBUFFER")
    public static let ipReceivePacket = named("IP_RECEIVEPACKET")
    public static let tcpFragment = named("TCP_FRAGMENT")
    public static let skbDrop = named("SKB_DROP")

    private static func named(_ name: String) -> EventSpec {
        guard let e = all.first(where: { $0.name == name }) else { fatalError("klab's catalog has no event \(name) (Sources/KlabSchema/Names.swift)") }
        return e
    }

    /// Every name above (a test checks that none is missing here).
    static var namedInCode: [EventSpec] {
        [socketCreate, socketClose, socketReceive, socketAccept, tcpSend, tcpReceive, tcpSendPacket, tcpReceivePacket, tcpSendAck,
         tcpRecvAck, udpReceive, udpQueueSocketBuffer, icmpSend, icmpReceive, icmpReply, ipSendBuffer, ipReceivePacket, tcpFragment, skbDrop]
    }

    /// The catalog checks itself: every name above (a missing one stops klab with its name) and
    /// every placement rule's partner is an event of the catalog. Returns the problems (empty
    /// when none).
    public static func problems() -> [String] {
        _ = namedInCode
        var out: [String] = []
        for e in all {
            for rule in e.rules + e.sites.flatMap({ $0.rules ?? [] }) {
                for p in rule.partners where event(named: p) == nil {
                    out.append("\(e.name): the rule \"\(rule)\" names \(p), which is not an event of the catalog")
                }
            }
        }
        return out
    }
}

import Foundation
import KlabSchema
import Testing

@testable import KlabAnalysis

/// klab compare-sites on a results folder of known shape: an event logged from two sites.
struct SiteComparisonTests {
    typealias Record = ResultsFixture.Record

    /// TCP_RECEIVEPACKET from cgroup_skb (its site in the header) and from tcp_probe (also);
    /// IP_RECEIVEPACKET from the device is the other layer.
    static let events = [
        ResultsFixture.Logged(event: Schema.ipReceivePacket, probe: Schema.netifReceiveSkb),
        ResultsFixture.Logged(event: Schema.tcpReceivePacket, probe: Schema.skbIngress, also: [Schema.tcpProbe]),
    ]
    static func ip(_ t: UInt64, skb: UInt64) -> Record { Record(t: t, event: Schema.ipReceivePacket, probe: Schema.netifReceiveSkb, skb: skb) }
    static func ingress(_ t: UInt64, seq: UInt32) -> Record { Record(t: t, event: Schema.tcpReceivePacket, probe: Schema.skbIngress, sock: 5, seq: seq) }
    static func probe(_ t: UInt64, skb: UInt64, seq: UInt32) -> Record {
        Record(t: t, event: Schema.tcpReceivePacket, probe: Schema.tcpProbe, skb: skb, sock: 5, seq: seq)
    }

    @Test func pairsTheSitesAndSeesWhatFallsBetween() throws {
        let records = [
            Self.ip(1_000, skb: 0xA), Self.ingress(2_000, seq: 100), Self.probe(2_500, skb: 0xA, seq: 100),  // nothing between
            Self.ingress(10_000, seq: 200), Self.ip(10_200, skb: 0xB), Self.probe(10_400, skb: 0xC, seq: 200),  // another packet's IP event between
            Self.probe(20_000, skb: 0xD, seq: 300),  // no occurrence from cgroup_skb with that sequence number
        ]
        let f = try ResultsFixture(records, events: Self.events)
        let c = try SiteComparison(folder: try f.folder())
        #expect(c.rows.count == 1 && c.cutShort.isEmpty)
        let r = try #require(c.rows.first)
        #expect(r.event == "TCP_RECEIVEPACKET" && r.exactSite == Schema.skbIngress.site && r.otherSite == Schema.tcpProbe.site)
        #expect(r.pairs == 2 && r.unpaired == 1 && r.orderKept == 1 && r.inBetween == ["IP_RECEIVEPACKET": 1])
        #expect([r.p10OffsetNs, r.medianOffsetNs, r.p90OffsetNs] == [400, 400, 400])
        #expect(c.markdown.contains("| TCP_RECEIVEPACKET | `cgroup_skb/ingress` | `tp_btf tcp:tcp_probe` | 2 (+1 unpaired) | 1/2 |"))

        // Cut short: read to the last whole record, and said.
        try f.append([1, 2, 3], to: f.layout.events)
        let cut = try SiteComparison(folder: try f.folder())
        #expect(cut.rows.first?.pairs == 2 && cut.cutShort.map(\.wholeRecords) == [records.count])
    }
}

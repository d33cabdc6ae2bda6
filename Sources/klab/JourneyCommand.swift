import ArgumentParser
import Foundation
import KlabLab
import KlabScenario

struct JourneyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journey",
        abstract: "Print each packet's journey through the stack, from a results folder.",
        discussion: """
            For every packet on the wire (in time order), the kernel events joined to it, in
            order, with their distance from the wire in ns and in TSC cycles (from the measured
            TSC rate): from the socket to the wire for what the host sent, from the wire to the
            socket for what it received. The same data is in RESULTS/journeys.jsonl.

              klab journey results/demo/tcp-handshake
              klab journey results/demo/tcp-handshake tcp and 'tcp[tcpflags] & tcp-syn != 0'
            """)

    @Argument(help: "A results folder.")
    var results: String

    @Argument(parsing: .remaining, help: "A pcap-filter expression: only the packets it matches.")
    var filter: [String] = []

    func run() throws {
        let file = "\(results)/journeys.jsonl"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw ValidationError("no journeys.jsonl in \(results) (a results folder of klab run)")
        }
        var keep: Set<Int>?
        if !filter.isEmpty {
            let f: PacketFilter
            do { f = try PacketFilter(filter.joined(separator: " ")) } catch { throw ValidationError("\(error)") }
            let frames = try PcapReader.frames("\(results)/capture.pcap")
            keep = Set(frames.indices.filter { f.matches(frames[$0]) }.map { $0 + 1 })
        }
        let dec = JSONDecoder()
        for line in text.split(separator: "\n") {
            guard let j = try? dec.decode(Journey.self, from: Data(line.utf8)) else {
                if line.contains("unmatched_packet_events") && keep == nil { say("\(line)") }
                continue
            }
            if let keep, !keep.contains(j.frame) { continue }
            say("#\(j.frame) \(j.direction == "to_host" ? "to host  " : "from host") \(j.packet)")
            for s in j.events {
                say(String(format: "    %+9.1f µs %+10lld cycles  ", Double(s.from_wire_ns) / 1000, s.from_wire_cycles)
                    + "\(s.event.padding(toLength: 22, withPad: " ", startingAt: 0)) \(s.probe)")
            }
        }
    }
}

import ArgumentParser
import Foundation
import KlabCheck
import KlabResults
import KlabLab
import KlabScenario
import KlabSchema

struct JourneyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journey",
        abstract: "Print each packet's journey through the stack, from a results folder.",
        discussion: prose("""
            For every packet on the wire (in time order), the kernel events joined to it, in
            order, with their distance from the wire in ns and in TSC cycles (from the measured
            TSC rate): from the socket to the wire for what the host sent, from the wire to the
            socket for what it received. The same data is in RESULTS/journeys.jsonl.

            With --sockets, every socket instead (by its cookie, as events name it): its
            addresses and its socket and connection events in order (repeats counted), then
            how many protocol and IP events it had.

              klab journey results/demo/tcp-handshake
              klab journey results/demo/tcp-handshake tcp and 'tcp[tcpflags] & tcp-syn != 0'
              klab journey --sockets results/demo/tcp-handshake
            """))

    @Flag(help: "Print each socket's events instead of each packet's journey.")
    var sockets = false

    @Argument(help: "A results folder.")
    var results: String

    @Argument(parsing: .remaining, help: "A pcap-filter expression: only the packets it matches.")
    var filter: [String] = []

    func run() throws {
        if sockets || filter == ["--sockets"] { return try printSockets() }
        let layout = ResultsLayout(results)
        let lines: LineReader
        do { lines = try LineReader(layout.journeys) } catch {
            throw ValidationError("no journeys.jsonl in \(results) (a results folder of klab run)")
        }
        // Journeys come in capture order: the filter reads the capture alongside them.
        var frames: FrameReader?, packetFilter: PacketFilter?
        if !filter.isEmpty {
            do { packetFilter = try PacketFilter(filter.joined(separator: " ")) } catch { throw ValidationError("\(error)") }
            do { frames = try ResultsFolder(results).frames() } catch { throw ValidationError("\(error)") }
        }
        var frame: Frame?
        let dec = JSONDecoder()
        while let line = try lines.next() {
            guard let j = try? dec.decode(Journey.self, from: Data(line)) else {
                if packetFilter == nil, !line.isEmpty { say(String(decoding: line, as: UTF8.self)) }
                continue
            }
            if let packetFilter, let frames {
                while frame.map({ $0.number < j.frame }) ?? true, let f = try frames.next() { frame = f }
                guard let f = frame, f.number == j.frame, packetFilter.matches(f.bytes) else { continue }
            }
            say("#\(j.frame)\(j.link.map { " \($0)" } ?? "") \(j.direction == "to_host" ? "to host  " : "from host") \(j.packet)")
            for s in j.events {
                say(String(format: "    %+9.1f µs %+10lld cycles  ", Double(s.from_wire_ns) / 1000, s.from_wire_cycles)
                    + "\(s.event.padding(toLength: 22, withPad: " ", startingAt: 0)) \(s.probe)")
            }
        }
    }

    /// Streams events.bin: per socket, its socket- and connection-level events in order, runs
    /// of the same event counted, and how many protocol and IP events it had.
    func printSockets() throws {
        let folder: ResultsFolder
        do { folder = try ResultsFolder(results) } catch { throw ValidationError("\(error)") }
        struct Socket { var first: UInt64; var endpoints: PacketIdentity?; var runs: [(name: String, t: UInt64, count: Int)] = []; var packetEvents = 0 }
        var socks: [UInt64: Socket] = [:]
        var order: [UInt64] = []
        let events = try EventReader(folder.eventsFile)
        while let e = try events.next() {
            guard e.sock != 0 else { continue }
            if socks[e.sock] == nil { socks[e.sock] = Socket(first: e.timeNs); order.append(e.sock) }
            if socks[e.sock]!.endpoints == nil, let p = e.endpoints, p.sourcePort != 0 || p.destinationPort != 0 { socks[e.sock]!.endpoints = p }
            guard (Schema.event(e.event)?.level ?? .ip) <= .connection else { socks[e.sock]!.packetEvents += 1; continue }
            if let last = socks[e.sock]!.runs.last, last.name == e.name {
                socks[e.sock]!.runs[socks[e.sock]!.runs.count - 1].count += 1
            } else {
                socks[e.sock]!.runs.append((e.name, e.timeNs, 1))
            }
        }
        for cookie in order {
            let s = socks[cookie]!
            let ends = s.endpoints.map { " \($0.source):\($0.sourcePort) ↔ \($0.destination):\($0.destinationPort)" } ?? ""
            say("socket \(cookie)\(ends)")
            for r in s.runs {
                say(String(format: "    %+12.1f µs  ", Double(r.t - s.first) / 1000) + r.name + (r.count > 1 ? " ×\(r.count)" : ""))
            }
            if s.packetEvents > 0 { say("    and \(s.packetEvents) protocol and IP events (klab journey shows them by packet)") }
        }
    }
}

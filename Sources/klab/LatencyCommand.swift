import ArgumentParser
import Foundation
import KlabAnalysis
import KlabLab
import KlabResults
import KlabSchema

struct LatencyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency",
        abstract: "The latency from one event to another of the same packet, from a results folder.",
        discussion: prose("""
            Pairs every --from event (default IP_RECEIVEPACKET) with the --to
            event (default TCP_RECEIVEPACKET) of the same packet in
            RESULTS/events.bin (the tracer's records, streamed in time order)
            and measures the time between them in ns and in TSC cycles (at
            the TSC rate the run measured). This is the seed paper's Figure 2: for 55-byte TCP
            segments, the receive latency from the IP layer to the TCP layer
            had two modes, near 5,000 and 6,000 cycles, and about 5% of the
            packets above 10,000 cycles (Linux 2.6.22, the paper's hardware).
            The report ends with the two side by side.

              klab run lab/scenarios/wire-tcp.yaml -o /tmp/r
              klab latency /tmp/r/wire-tcp
              klab run lab/scenarios/wire-tcp.yaml --all-sites -o /tmp/a
              klab latency /tmp/a/wire-tcp --to TCP_RECVACK@tcp_probe
              klab latency /tmp/r/udp-echo --to UDP_QUEUE_SOCKETBUFFER
              klab latency /tmp/r/wire-tcp --tail 20000 --json

            Sites. An event is taken from the site the run logged it from
            (RESULTS/run.json names it and whether it is exact, in
            Klogger's own function, or approximate). In a run with
            --all-sites, EVENT@PROBE or --to-probe picks another site: the
            records whose probe contains PROBE (tcp_probe, sockops, ...). The
            report names both sites and their placement: an approximate site
            measures a slightly different span than Klogger's.

            Pairing. By the skb address when both sites record it: the
            to-event comes after the from-event, on the same skb, and the
            packet identity must agree, so a reused skb address is not taken
            for the same packet. Otherwise by the packet identity (protocol,
            addresses, ports, IP ID, TCP sequence number), first in, first out.

            What it prints:
              accounting   every from-event is paired or counted under one
                           reason, as an equation that adds up: another
                           protocol; an IP fragment; no lab socket at its
                           address and port; its socket closed by the
                           application; its socket not ESTABLISHED (the log's
                           TCP state changes); a segment class the to-event
                           never fired for; coalesced into a later segment's
                           skb; after the last to-event; lost records (a
                           serial-number gap then); unexplained. Then the
                           to-events with no from-event and the records the
                           run lost.
              percentiles  p1 ... p99.9 in ns and cycles
              histogram    log-spaced bins in cycles
              modes        peaks of a Gaussian mixture fitted to log(cycles),
                           k = 1...4 chosen by BIC, with each mode's weight;
                           a bootstrap likelihood-ratio test of one component
                           against two and Hartigan's dip test (statistic and
                           p-value each: p < 0.05 says more than one mode)
              tail         the fraction above twice the main mode, above the
                           paper's 10,000 cycles and above each --tail
              attribution  each packet goes to its nearest mode or to the
                           tail. For the task that ran the to-event (the
                           injector, the socket's reader, ksoftirqd, other),
                           context and sk_owned_by_user (when logged), its
                           CPU and whether it is the from-event's, the TCP
                           fast or slow path (known when sockops logged
                           TCP_RECVACK, as with --all-sites), coalescing and
                           the segment class: the share of each mode that has
                           each value. Attributes are ranked by the
                           uncertainty coefficient U = I(class; attribute) /
                           H(class): 1 means the attribute decides the mode.

            Files, in RESULTS/latency/ (or --out): FROM-TO.svg (the CDF,
            cycles on a log scale, modes and thresholds marked), FROM-TO.csv
            (one row per packet: times, latency, CPU, task, every attribute)
            and FROM-TO.json (what --json prints).

            A run cut short (killed, a full disk) is read up to the last whole
            record of events.bin, and the report says so.

            Exit codes: 0 done; 64 bad command line (no such folder, a file
            instead of a folder, an event or site the run did not log); 65 bad
            results (run.json or events.bin missing or corrupt, no TSC rate:
            FILE: error: ...; or no pair found, with the events the run
            holds).
            """))

    @Argument(help: "A results folder of klab run.")
    var results: String

    @Option(help: ArgumentHelp("The event the latency starts at; EVENT@PROBE picks a site.", valueName: "event"))
    var from = Schema.ipReceivePacket.name

    @Option(help: ArgumentHelp("The event the latency ends at; EVENT@PROBE picks a site.", valueName: "event"))
    var to = Schema.tcpReceivePacket.name

    @Option(name: .customLong("from-probe"), help: ArgumentHelp("Only --from records whose probe contains this.", valueName: "substring"))
    var fromProbe: String?

    @Option(name: .customLong("to-probe"), help: ArgumentHelp("Only --to records whose probe contains this.", valueName: "substring"))
    var toProbe: String?

    @Option(name: .customLong("tail"), help: ArgumentHelp("Also report the fraction above this many cycles (repeatable).", valueName: "cycles"))
    var tails: [Double] = []

    @Option(help: ArgumentHelp("Folder for the SVG, CSV and JSON (default RESULTS/latency).", valueName: "dir"))
    var out: String?

    @Option(help: "Seed of the bootstrap and subsamples, so a result repeats.")
    var seed: UInt64 = 1

    @Flag(help: "Print the result as JSON (the same as the .json file) instead of the report.")
    var json = false

    func validate() throws {
        if tails.contains(where: { !($0 > 0) }) { throw ValidationError("--tail takes a positive number of cycles") }
    }

    func run() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: results, isDirectory: &isDir) else {
            throw ValidationError("no such results folder: \(results)")
        }
        guard isDir.boolValue else {
            let folder = (results as NSString).deletingLastPathComponent
            throw ValidationError("\(results) is a file: klab latency reads a results folder (its run.json and events.bin), "
                                  + "e.g. klab latency \(folder.isEmpty ? "." : folder)")
        }
        let analysis: LatencyAnalysis
        do {
            let folder = try ResultsFolder(results)
            let log = try EventLog(folder: folder, from: EventSelector(from, probe: fromProbe), to: EventSelector(to, probe: toProbe))
            analysis = try LatencyAnalysis(log: log, extraTails: tails, analysedOn: KlabLab.Clock.cpuModel ?? "unknown", seed: seed)
        } catch let e as LatencyError {
            if case .usage(let m) = e { throw ValidationError(m) }
            FileHandle.standardError.write(Data("klab: \(e)\n".utf8))
            throw ExitCode(ExitCodes.dataError)
        } catch let e as ResultsError {
            FileHandle.standardError.write(Data("klab: \(LatencyError.results(e))\n".utf8))
            throw ExitCode(ExitCodes.dataError)
        }
        let dir = out ?? ResultsLayout(results).latency
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let stem = "\(dir)/\(Self.stem(from, fromProbe))-\(Self.stem(to, toProbe))"
        let files = ["\(stem).svg", "\(stem).csv", "\(stem).json"]
        let data = try analysis.json(files: files)
        try OutputFile.write(analysis.svg().utf8, to: files[0])
        try OutputFile.write(analysis.csv().utf8, to: files[1])
        try OutputFile.write(data, to: files[2])
        say(json ? String(decoding: data, as: UTF8.self) : analysis.text(files: files))
    }

    /// A file name part: the event, and the probe selector if any, in safe characters.
    static func stem(_ spec: String, _ probe: String?) -> String {
        let s = EventSelector(spec, probe: probe)
        let p = s.probe.map { "@" + String($0.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" }) } ?? ""
        return s.name + p
    }
}

import ArgumentParser
import Foundation
import KlabCheck
import KlabClient
import KlabResults

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Judge where every schema event sits, from a results folder.",
        discussion: prose("""
            Streams the run's event log (events.bin) against its capture (capture.pcap and
            capture.frames), joins each event to the wire packet its host sent or received
            (by the packet's fields, by skb inside the kernel, by the IP event that follows
            a socket-side TCP event in the same call chain, or by a TCP socket's flow, seq,
            ack and flags; one skb that left as several packets (TSO/GSO) joins the first),
            and judges every occurrence against the placement rules the catalog declares
            for the site it was logged from (`klab schema` lists them): before or after
            its packet on the wire, in order with the other layers' events on the same
            packet or socket, between the right handshake segments. Approximate sites are
            judged against their own documented placement, and the verdict says so.

            Prints a table of verdicts (N of N hold, or the counter-examples with frame,
            time, skb and socket), what joined nothing, and the seed's §2.2 figures:
            TCP_SENDPACKET and wire packets per write, IP fragments among TCP packets,
            tcp_fragment calls, reassembly, ACKs per frame freed after a full window.
            Writes RESULTS/verdicts.json. Exit status 1 when a rule is violated. `klab
            run` does the same at the end of every scenario. Memory stays bounded however
            long the run.

              klab check results/demo/tcp-handshake
              klab check RESULTS --json | jq '.verdicts[] | select(.held < .judged)'
              klab check lab-1f2e3d4c     a lab on klab daemon, as recorded so far
            """))

    @Argument(help: "A results folder of klab run, or a lab's id on klab daemon (lab-…).")
    var results: String

    @OptionGroup(title: "Daemon") var socket: SocketOption

    @Flag(help: "Print the verdicts as JSON (the same as verdicts.json) instead of the table.")
    var json = false

    @Option(help: ArgumentHelp("How far apart in time an event and its wire packet may be, in ms.",
                               discussion: "Wider finds packets a slow path held longer (a backlog behind a descheduled reader), at the cost of speed and memory. By default \(Correlator.defaultWindow / 1_000_000) ms, and when that leaves packet events joined to no wire packet (no drop explains them), a second pass at \(Correlator.widenedWindow / 1_000_000) ms, kept when it joins more; the output says so."))
    var windowMs: Double?

    func validate() throws {
        if let windowMs, !(windowMs > 0 && windowMs <= 10_000) { throw ValidationError("--window-ms must be between 0 and 10000") }
    }

    func run() throws {
        if results.hasPrefix("lab-") && !FileManager.default.fileExists(atPath: results) {
            let client = socket.client, lab = results
            let check = try blocking { try await client.call(.GET, "/labs/\(lab)/check", API.Check.self) }
            say(check.text)
            if check.violations > 0 { throw ExitCode(ExitCodes.failed) }
            return
        }
        let report: CheckReport
        do {
            report = try PlacementChecker.check(ResultsFolder(results), window: windowMs.map { UInt64($0 * 1e6) })
        } catch let e as ResultsError {
            FileHandle.standardError.write(Data("klab check: \(e)\n".utf8))
            throw ExitCode(ExitCodes.dataError)
        }
        let data = try report.write(into: results)
        say(json ? String(decoding: data, as: UTF8.self) : report.text())
        if report.violations > 0 { throw ExitCode(ExitCodes.failed) }
    }
}

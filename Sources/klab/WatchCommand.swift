import ArgumentParser
import Foundation
import KlabClient
import KlabResults

struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch a lab on klab daemon live: its packets and kernel events as they happen, until Ctrl-C.",
        discussion: prose("""
            One line per packet on the lab's links and per kernel event, as klab run's
            timeline prints them (times in µs from the first line), from now on:

              klab watch lab-1f2e3d4c                               everything
              klab watch lab-1f2e3d4c icmp                          a pcap-filter, as tcpdump takes it
              klab watch lab-1f2e3d4c tcp port 80 --events=-TCP_*   without the TCP_ events
              klab watch lab-1f2e3d4c --events 'IP_*' --json        only IP_ events, as JSON lines

            The pcap-filter applies to the packets and to the events that carry a packet or a
            socket's endpoints; events with neither (a socket created) always show. --events
            takes klab run's toggles (globs and aliases): starting from every event when the
            first one turns events off (-NAME), from none when it turns them on (NAME). A
            packet's events are not joined to it here: klab check LAB judges them, and the
            results folder has the journeys once the lab is down.

            With --json, each line is a packet (a line of a results folder's journeys.jsonl,
            with no events) or an event (a line of its events.jsonl). Packets and events come
            out about 50-100 ms after they happen, in time order.

            Ctrl-C ends it (exit 0). When the lab is taken down the last line says so (exit
            0); when the daemon stops, too (exit 69). With --json, these lines starting with #
            go to stderr. The daemon's API serves the same stream
            (server-sent events):

              curl -N --unix-socket /run/klab/klab.sock 'http://klab/labs/LAB/stream?filter=icmp'
            """))

    @Argument(help: "The lab's id (klab up printed it; klab ls lists them).") var lab: String
    @Argument(help: ArgumentHelp("A pcap-filter expression for the packets (one or several words).", valueName: "pcap-filter"))
    var filter: [String] = []
    @Option(name: .customLong("events"), parsing: .singleValue, help: ArgumentHelp(
        "Events to show: NAME or +NAME on, -NAME off, in order; globs and aliases work (--events=-TCP_* --events=-SOCKET_*).",
        valueName: "toggle"))
    var toggles: [String] = []
    @Flag(help: "JSON lines instead of the timeline: packets as in journeys.jsonl, events as in events.jsonl.") var json = false
    @Flag(name: .customLong("from-start"), help: "Begin with everything since the lab came up.") var fromStart = false
    @OptionGroup var socket: SocketOption

    /// The stream's path and query (every value percent-encoded).
    var path: String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_.~"))
        func enc(_ s: String) -> String { s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s }
        var query: [String] = []
        if !filter.isEmpty { query.append("filter=" + enc(filter.joined(separator: " "))) }
        if !toggles.isEmpty { query.append("events=" + enc(toggles.joined(separator: ","))) }
        if fromStart { query.append("since=start") }
        return "/labs/\(enc(lab))/stream" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
    }

    func run() throws {
        // Ctrl-C: the stream closes with the process; the daemon sees it go.
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        interrupt.setEventHandler { Glibc.exit(0) }
        interrupt.resume()
        let client = socket.client, path = self.path, printer = Printer(lab: lab, json: json)
        let end: API.StreamEnd? = try blocking {
            do {
                try await client.events(path) { name, data in try printer.show(name, data) }
            } catch let e as DaemonClient.Failure {
                throw e
            } catch {
                throw DaemonClient.Failure("the stream from klab daemon at \(client.socket) broke off: \(error)")
            }
            return printer.end
        }
        guard let end else {
            FileHandle.standardError.write(Data("klab: the stream from klab daemon at \(client.socket) broke off\n".utf8))
            throw ExitCode(ExitCodes.unavailable)
        }
        printer.note("# \(end.reason): the stream ends")
        if end.cause != API.StreamEnd.labDown { throw ExitCode(ExitCodes.unavailable) }
    }

    /// Prints the stream's messages as they come (on `blocking`'s task only).
    final class Printer: @unchecked Sendable {
        let lab: String, json: Bool
        /// The first line's time: the others count from it.
        var since: UInt64?
        var links = 0
        var end: API.StreamEnd?
        init(lab: String, json: Bool) { (self.lab, self.json) = (lab, json) }

        /// Lines starting with #: on stderr with --json, so that stdout is JSON lines only.
        func note(_ line: String) {
            (json ? FileHandle.standardError : FileHandle.standardOutput).write(Data((line + "\n").utf8))
        }

        func show(_ name: String, _ data: Data) throws {
            switch name {
            case "header":
                let h = try JSONDecoder().decode(RunHeader.self, from: data)
                links = h.capture?.links.count ?? 0
                note("# watching \(lab) (\(h.scenario)): packets and kernel events as they happen; Ctrl-C stops")
            case "packet" where json, "event" where json:
                say(String(decoding: data, as: UTF8.self))
            case "packet":
                let p = try JSONDecoder().decode(Journey.self, from: data)
                say(time(p.t_ns) + "  " + TimelineLine.wire(number: p.frame, link: links > 1 ? p.link : nil, toHost: p.direction == "to_host", packet: p.packet))
            case "event":
                let e = try JSONDecoder().decode(EventLine.self, from: data)
                say(time(e.t_ns) + "  event " + e.text)
            case "end":
                end = try JSONDecoder().decode(API.StreamEnd.self, from: data)
            default:
                break
            }
        }

        private func time(_ ns: UInt64) -> String {
            let zero = since ?? ns
            since = zero
            return TimelineLine.time(ns, since: zero)
        }
    }
}

import ArgumentParser
import Foundation
import KlabLab
import KlabResults
import KlabPacket
import KlabScenario
import KlabSchema
import KlabTracer

struct Trace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Trace the schema's events live, until Ctrl-C.",
        discussion: prose("""
            Either in a fresh lab host that runs a command, or in an existing network namespace:

              klab trace -- ping -c 3 127.0.0.1            # a new host (lo up) runs the command
              klab trace --netns /proc/1234/ns/net          # a namespace by path
              klab trace --netns blue --json                # or by name (/run/netns/blue)
              klab trace --filter 'tcp port 80' -- curl -s http://127.0.0.1/

            One readable line per event, or JSON Lines (--json, the fields of events.jsonl).
            --filter takes a pcap-filter expression, compiled by libpcap, and applies it to
            events that carry a packet or a socket's endpoints; events with neither (a socket
            being created) always show. Events from cgroup and sockops hooks only cover sockets
            created in klab's lab cgroup: a command klab runs, not processes already living in a
            namespace you give with --netns. Needs root.
            """))

    @Option(help: ArgumentHelp("A network namespace to observe: a path, or a name under /run/netns.", valueName: "path|name"))
    var netns: String?

    @Option(help: ArgumentHelp("pcap-filter expression for packet events.", valueName: "expression"))
    var filter: String?

    @Flag(help: "JSON Lines instead of readable lines.")
    var json = false

    @OptionGroup(title: "Tracing") var tracing: TracingOptions

    @Argument(parsing: .postTerminator, help: "A command to run in a fresh lab host (after --).")
    var command: [String] = []

    func validate() throws {
        if (netns == nil) == command.isEmpty { throw ValidationError("give either --netns or a command after --") }
        if let filter {
            do { _ = try PacketFilter(filter) } catch { throw ValidationError("\(error)") }
        }
    }

    func run() throws {
        do { try trace() } catch { die(error) }
    }

    private func trace() throws {
        let config = try tracing.config()
        let packetFilter = try filter.map(PacketFilter.init)
        try Preflight.check()
        Interrupt.install()
        let path = netns.map { $0.contains("/") ? $0 : "/run/netns/\($0)" }
        let host = try LabHost(name: "trace", joining: path)
        defer { host.shutdown() }
        if path == nil { try host.run { try Netlink().setUp(1) } }  // ip link set lo up

        let tscHz = Clock.tscHz()
        let started = Clock.monotonicNs()
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = self.json
        let tracer = try Tracer(
            config: config, namespaces: [(host.netnsCookie, host.netnsInode)], cgroup: try LabCgroup(), rawPath: "/dev/null",
            live: { e in
                if let f = packetFilter, let id = e.packet ?? e.endpoints, let bytes = try? id.packet().serialize(), !f.matches(bytes) {
                    return
                }
                if json {
                    if let data = try? enc.encode(EventLine(e, frame: nil, tscHz: tscHz)) { say(String(decoding: data, as: UTF8.self)) }
                } else {
                    say(Trace.line(e, since: started))
                }
            })
        if !json {
            for s in tracer.selections where s.site == nil { say("# \(s.event.name): \(s.placement)") }
            say("# tracing netns \(host.netnsInode)\(path.map { " (\($0))" } ?? ""); Ctrl-C stops")
        }
        tracer.start()
        if command.isEmpty {
            while !Interrupt.requested { usleep(50_000) }
        } else {
            // Spawned from the host's thread, the child starts in the host's namespace.
            let child = try host.run { () throws -> Process in
                let p = Process()
                p.executableURL = URL(fileURLWithPath: try Trace.resolve(command[0]))
                p.arguments = Array(command.dropFirst())
                try p.run()
                return p
            }
            while child.isRunning && !Interrupt.requested { usleep(20_000) }
            if child.isRunning { child.terminate(); child.waitUntilExit() }
            usleep(50_000)  // the last records of the command's exit
        }
        tracer.stop()
        let c = tracer.counters()
        if !json { say("# \(c.emitted) events, \(c.dropped) lost") }
    }

    /// argv[0] as a path: as given when it has a slash, else found on PATH.
    static func resolve(_ name: String) throws -> String {
        if name.contains("/") { return name }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw ValidationError("\(name): no such program on PATH")
    }

    static func line(_ e: TraceEvent, since: UInt64) -> String {
        var s = String(format: "%10.3f ms ", Double(Int64(e.timeNs) - Int64(since)) / 1e6)
        s += "\(e.name.padding(toLength: 22, withPad: " ", startingAt: 0)) cpu\(e.cpu) \(e.comm)[\(e.tid)]"
        if e.sock != 0 { s += " sock \(e.sock)" }
        if let p = e.packet { s += " \(p)" } else if let p = e.endpoints { s += " \(p.source):\(p.sourcePort) > \(p.destination):\(p.destinationPort)" }
        if e.probe == Schema.setState.id { s += " \(tcpStateName(e.arg0)) → \(tcpStateName(e.arg1))" }
        if e.bytes > 0 { s += " \(e.bytes) bytes" }
        return s + "  [\(e.probeName)]"
    }
}

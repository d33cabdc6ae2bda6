import ArgumentParser
import KlabSchema
import KlabTracer

/// What the tracer logs, as Klogger's log levels and /proc toggles did.
struct TracingOptions: ParsableArguments {
    @Option(help: ArgumentHelp(
        "Log level: socket, connection, protocol or ip. Each level logs everything the one before it does.",
        valueName: "level"))
    var level: String = "ip"

    @Option(name: .customLong("events"), parsing: .singleValue, help: ArgumentHelp(
        "Turn events on (NAME or +NAME) or off (-NAME) after the level, in order; globs and aliases work: --events=-TCP_* --events +IP_SENDPACKET.",
        valueName: "toggle"))
    var toggles: [String] = []

    @Option(name: .customLong("disable-backend"), parsing: .singleValue, help: ArgumentHelp(
        "Never use this probe backend (fentry, kprobe, cgroup, sockops, tracepoint, device), as if the kernel lacked it; the next site is taken.",
        valueName: "backend"))
    var disabled: [String] = []

    @Flag(name: .customLong("all-sites"), help: "Log each event from every site that attaches, not just the most faithful: to compare sites (klab compare-sites).")
    var allSites = false

    func config() throws -> TracerConfig {
        guard let l = Level(name: level) else {
            throw ValidationError("--level must be socket, connection, protocol or ip, not '\(level)'")
        }
        let backends = try disabled.map { name in
            guard let b = Backend(rawValue: name) else {
                throw ValidationError("--disable-backend: '\(name)' is not one of \(Backend.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return b
        }
        var c = TracerConfig(level: l, toggles: toggles, disabledBackends: Set(backends))
        c.allSites = allSites
        do { _ = try c.events() } catch { throw ValidationError("\(error)") }
        return c
    }

    func validate() throws { _ = try config() }
}

import Foundation

/// The bodies klab daemon's API takes and returns (Sources/KlabDaemon/openapi.yaml describes
/// them). JSON keys are snake_case, as written here.
public enum API {
    /// The largest request body the daemon reads (1 MiB); a larger one gets 413.
    public static let maxBody = 1 << 20
    /// A request whose body has not arrived whole after this long gets 408.
    public static let bodySeconds = 10
    /// A request whose head (request line and headers) has not arrived whole this long after
    /// its first byte gets 408 and the connection closes.
    public static let headSeconds = 10

    /// A scenario submitted by content (POST /labs, POST /runs).
    public struct Submission: Codable, Sendable {
        /// The file's name (NAME.yaml, or NAME.pkt for a packetdrill script): errors point
        /// into it as NAME.yaml:LINE:COLUMN.
        public var file: String
        public var content: String
        /// `--set NAME=VALUE` overrides of the scenario's params: (for a .pkt script, its
        /// `-D NAME=VALUE` definitions).
        public var set: [String: String]?
        /// A .pkt script's packetdrill command-line options (klab run --pkt-option NAME[=VALUE]).
        public var options: [String]?
        public init(file: String, content: String, set: [String: String]? = nil, options: [String]? = nil) {
            (self.file, self.content, self.set, self.options) = (file, content, set, options)
        }
        public static let keys: Set<String> = ["file", "content", "set", "options"]
    }

    public struct Host: Codable, Sendable {
        public let name: String
        public let address: String
        public init(name: String, address: String) { (self.name, self.address) = (name, address) }
    }

    public struct Lab: Codable, Sendable {
        public let id: String
        public let scenario: String
        public let hosts: [Host]
        /// The lab's results folder on the daemon's machine (capture and events so far).
        public let directory: String
        /// RFC 3339.
        public let created: String
        public init(id: String, scenario: String, hosts: [Host], directory: String, created: String) {
            (self.id, self.scenario, self.hosts, self.directory, self.created) = (id, scenario, hosts, directory, created)
        }
    }

    /// A command to run in a lab host (POST /labs/{id}/exec).
    public struct Exec: Codable, Sendable {
        public var host: String
        public var argv: [String]
        public init(host: String, argv: [String]) { (self.host, self.argv) = (host, argv) }
        public static let keys: Set<String> = ["host", "argv"]
    }

    /// One line of an exec's response (application/x-ndjson): output as it comes, then the
    /// end: `exit_status`, or `signal` when the command was killed by one.
    public struct ExecLine: Codable, Sendable {
        public var output: String?
        public var exit_status: Int?
        public var signal: Int?
        public init(output: String? = nil, exit_status: Int? = nil, signal: Int? = nil) { (self.output, self.exit_status, self.signal) = (output, exit_status, signal) }
    }

    /// The last message of a lab's live stream (GET /labs/{id}/stream, `event: end`).
    public struct StreamEnd: Codable, Sendable {
        public let reason: String
        /// lab_down or daemon_stopping.
        public let cause: String
        public static let labDown = "lab_down", daemonStopping = "daemon_stopping"
        public init(reason: String, cause: String) { (self.reason, self.cause) = (reason, cause) }
    }

    public enum RunState: String, Codable, Sendable {
        case queued, running, passed, failed, interrupted
        /// Could not start (a requirement missing, a lab that could not be built).
        case error
        public var finished: Bool { self != .queued && self != .running }
    }

    public struct Run: Codable, Sendable {
        public let id: String
        public let scenario: String
        public var state: RunState
        public var failures: [String]
        /// RFC 3339.
        public let submitted: String
        public var finished: String?
        /// When a worker took it (RFC 3339, to the millisecond); with `finished`, this shows
        /// which runs played side by side (klab daemon --jobs).
        public var started: String?
        public init(id: String, scenario: String, state: RunState, failures: [String], submitted: String, finished: String?, started: String? = nil) {
            (self.id, self.scenario, self.state, self.failures, self.submitted, self.finished, self.started) = (id, scenario, state, failures, submitted, finished, started)
        }
    }

    /// A file of a run's results folder; `path` is NAME or DIR/NAME (programs/…).
    public struct ResultFile: Codable, Sendable {
        public let path: String
        public let size: Int
        public init(path: String, size: Int) { (self.path, self.size) = (path, size) }
    }

    public struct Check: Codable, Sendable {
        /// Occurrences judged, and those that broke a placement rule.
        public let judged: Int
        public let violations: Int
        /// The verdict table as `klab check` prints it.
        public let text: String
        public init(judged: Int, violations: Int, text: String) { (self.judged, self.violations, self.text) = (judged, violations, text) }
    }

    public struct Problem: Codable, Sendable, Error, CustomStringConvertible {
        public let error: String
        public init(_ error: String) { self.error = error }
        public var description: String { error }
    }

    public struct Info: Codable, Sendable {
        public let version: String
        public let pid: Int
        public let labs: Int
        public let runs_queued: Int
        public init(version: String, pid: Int, labs: Int, runs_queued: Int) { (self.version, self.pid, self.labs, self.runs_queued) = (version, pid, labs, runs_queued) }
    }
}

import ArgumentParser
import Foundation
import KlabClient
import KlabDaemon
import KlabScenario
import Logging

/// Where the client commands find klab daemon: --socket, --url, then $KLAB_URL, then
/// $KLAB_SOCKET, then /run/klab/klab.sock. Over a URL, the token from --token-file or $KLAB_TOKEN.
struct SocketOption: ParsableArguments {
    @Option(help: ArgumentHelp("klab daemon's socket (default: $KLAB_SOCKET, else \(DaemonClient.defaultSocket)).", valueName: "path"))
    var socket: String?

    @Option(help: ArgumentHelp(
        "klab daemon's loopback TCP listener (klab daemon --listen), instead of the socket (default: $KLAB_URL). Needs its token.",
        valueName: "http://127.0.0.1:port"))
    var url: String?

    @Option(help: ArgumentHelp("A file holding the listener's bearer token (default: the token in $KLAB_TOKEN).", valueName: "path"))
    var tokenFile: String?

    func validate() throws {
        if socket != nil && url != nil { throw ValidationError("give --socket or --url, not both") }
        if let url, !url.hasPrefix("http://") { throw ValidationError("--url takes http://HOST:PORT (klab daemon --listen), not '\(url)'") }
        if let tokenFile, (try? String(contentsOfFile: tokenFile, encoding: .utf8)) == nil {
            throw ValidationError("cannot read --token-file \(tokenFile): \(String(cString: strerror(errno)))")
        }
    }

    var client: DaemonClient {
        let env = ProcessInfo.processInfo.environment
        guard socket == nil, let url = url ?? env["KLAB_URL"].flatMap({ $0.isEmpty ? nil : $0 }) else {
            return DaemonClient(socket: DaemonClient.socketPath(socket))
        }
        let token = tokenFile.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? env["KLAB_TOKEN"]
        return DaemonClient(url: url, token: token?.trimmingCharacters(in: .whitespacesAndNewlines).nonEmpty)
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}

/// Runs async client code from a synchronous command; a daemon's refusal or an unreachable
/// socket is one line on stderr and exit status 69 (unavailable) or 1 (refused).
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>(), done = DispatchSemaphore(value: 0)
    Task {
        do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    do {
        return try box.result!.get()
    } catch let f as DaemonClient.Failure {
        FileHandle.standardError.write(Data("klab: \(f)\n".utf8))
        throw ExitCode(f.status == nil ? ExitCodes.unavailable : ExitCodes.failed)
    }
}

/// Where `blocking`'s task leaves its result (written before the semaphore's signal, read after its wait).
final class ResultBox<T>: @unchecked Sendable { var result: Result<T, Error>? }

/// The scenario as the daemon takes it: the file's name and its text.
func submission(_ file: String, set: [String: String], options: [String] = []) throws -> API.Submission {
    guard let content = try? String(contentsOfFile: file, encoding: .utf8) else {
        throw ValidationError("cannot read scenario file \(file): \(String(cString: strerror(errno)))")
    }
    return API.Submission(file: file, content: content, set: set.isEmpty ? nil : set, options: options.isEmpty ? nil : options)
}

struct DaemonCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon",
        abstract: "Serve labs, runs and commands in lab hosts over a Unix socket (HTTP/JSON).",
        discussion: prose("""
            Runs as root until SIGTERM or Ctrl-C. Its clients need no root, only the
            socket: it is mode 0660, group klab when that group exists (groupadd --system
            klab; usermod -aG klab USER). The client commands find it through --socket,
            then $KLAB_SOCKET, then \(Daemon.defaultSocket):

              klab up lab/scenarios/wire-ping.yaml      a lab that stays up; prints its id last
              klab ls                                   the labs (--runs: the runs)
              klab exec LAB a -- ping -c 3 198.18.0.2   a command in host a; exits with its status
              klab watch LAB icmp                       its packets and kernel events live
              klab check LAB                            placement verdicts of the lab so far
              klab down LAB                             takes the lab down
              klab rm RUN…                              removes a run, its folder too
              klab run --daemon FILE… --out DIR         runs on the daemon, results into DIR

            A lab is a scenario's hosts: and wire: (its steps are not played): each host
            a network namespace, klab's wire between their TUN links, the capture and the
            tracer writing the lab's results folder (DATA/labs/LAB) until it comes down.
            Runs are queued and played --jobs at a time (one by default), each on a lab
            of its own, into DATA/runs/RUN/results, with its own log (DATA/runs/RUN/
            log.txt). A run keeps running when its client goes away; an
            exec's command is stopped when its client goes away.

            The tracer's programs are loaded and attached once, at start, with the
            tracing options below (--cold-tracer: per run and lab instead); each lab and
            run is then selected in them by its namespaces, with its own records, serial
            numbers and lost-event count. `klab run --daemon` takes no tracing options.

            SIGTERM takes every lab down (stopping their commands), stops the runs in
            progress at their next step (marked interrupted, as are the queued ones) and
            removes the socket file. After a kill -9, the next start removes what the
            old daemon left: the socket file, its lab cgroup and the commands still in
            it, its labs' folders; its unfinished runs are marked interrupted.

            --listen 127.0.0.1:PORT serves the same API on a loopback TCP port too,
            every request with Authorization: Bearer TOKEN (401 without it or with
            another); the clients then take --url http://127.0.0.1:PORT with
            --token-file FILE, or $KLAB_URL with $KLAB_TOKEN:

              sudo klab daemon --listen 127.0.0.1:7001   (the token in /run/klab/klab.token)
              sudo cp /run/klab/klab.token ~/.klab-token; sudo chown $USER ~/.klab-token
              klab ls --url http://127.0.0.1:7001 --token-file ~/.klab-token

            Requests: a head whole within 10 s of its first byte, a body within 10 s of
            the head (else 408, and the connection closes), bodies of at most 1 MiB (413),
            JSON objects with known fields only (400). The API is in
            Sources/KlabDaemon/openapi.yaml; curl speaks it too:

              curl --unix-socket /run/klab/klab.sock http://klab/labs
            """))

    @Option(help: ArgumentHelp("The socket to serve on.", valueName: "path"))
    var socket = Daemon.defaultSocket

    @Option(help: ArgumentHelp("Folder for labs' and runs' results (labs/, runs/).", valueName: "dir"))
    var data = Daemon.defaultData

    @Option(help: ArgumentHelp("The socket's group, when it exists.", valueName: "name"))
    var group = "klab"

    @Option(help: ArgumentHelp(
        "Runs played at once, each on a lab of its own (namespaces, tracer, results, log). 1 by default: a run then times the kernel as a standalone klab run does, while runs side by side share the CPUs and disturb each other's latencies. Raise it for throughput (CI, many short runs), up to the number of CPUs.",
        valueName: "n"))
    var jobs = 1

    @Option(help: ArgumentHelp(
        "Also serve the API on this loopback TCP address (127.0.0.1:PORT, [::1]:PORT; port 0: any free one, logged), every request with Authorization: Bearer TOKEN.",
        valueName: "host:port"))
    var listen: String?

    @Option(help: ArgumentHelp(
        "The listener's token: a file of root's, mode 0600 (checked). Without it the daemon makes one and writes it beside the socket (klab.token, mode 0600), and says so in its log.",
        valueName: "path"))
    var tokenFile: String?

    @OptionGroup(title: "Tracing") var tracing: TracingOptions

    @Flag(name: .customLong("cold-tracer"), help: "Load the tracer's programs for each run and lab, as klab run does, instead of once at start (to compare start-up times).")
    var coldTracer = false

    func validate() throws {
        if !(1...256).contains(jobs) { throw ValidationError("--jobs takes 1 to 256 runs at once, not \(jobs)") }
        if tokenFile != nil && listen == nil { throw ValidationError("--token-file is the --listen listener's token: give --listen too") }
    }

    func run() throws {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = .info
            return h
        }
        let listener: Listener?
        do {
            listener = try listen.map { try Listener($0, tokenFile: tokenFile) }
        } catch {
            FileHandle.standardError.write(Data("klab: \(error)\n".utf8))
            throw ExitCode.validationFailure
        }
        let daemon = Daemon(socket: socket, data: data, group: group, jobs: jobs, listener: listener, logger: Logger(label: "klab.daemon"))
        let tracing = try self.tracing.config()
        do {
            try blocking {
                try await daemon.run { log in try Runner(tracing: tracing, warm: !coldTracer, log: log) }
            }
        } catch let e as ExitCode {
            throw e
        } catch {
            die(error)
        }
    }
}

struct Up: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring up a lab from a scenario's hosts: and wire: on klab daemon; its id is the last line.",
        discussion: prose("""
            The lab stays up until `klab down LAB` (or the daemon stops): run commands in
            its hosts with `klab exec`, judge what happened with `klab check`. The steps
            of the scenario are not played. Examples:

              LAB=$(klab up lab/scenarios/wire-ping.yaml | tail -1)
              klab exec $LAB a -- ping -c 2 198.18.0.2
              klab down $LAB
            """))

    @Argument(help: "A scenario file (YAML; see lab/SCENARIOS.md).") var file: String
    @Option(name: .customLong("set"), help: ArgumentHelp("Override a scenario parameter (its params:).", valueName: "NAME=VALUE"))
    var parameters: [String] = []
    @OptionGroup var socket: SocketOption

    func run() throws {
        let s = try submission(file, set: Run.parameters(parameters))
        let client = socket.client
        let lab = try blocking { try await client.call(.POST, "/labs", API.Lab.self, body: s) }
        for h in lab.hosts { say("host \(h.name)  \(h.address)") }
        say("results so far: \(lab.directory)")
        say(lab.id)
    }
}

struct Ls: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List klab daemon's labs (or, with --runs, its runs).")

    @Flag(help: "List the runs instead: id, state, scenario.") var runs = false
    @OptionGroup var socket: SocketOption

    func run() throws {
        let client = socket.client
        if runs {
            for r in try blocking({ try await client.call(.GET, "/runs", [API.Run].self) }) {
                say("\(r.id)  \(r.state.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0))  \(r.scenario)")
            }
            return
        }
        for l in try blocking({ try await client.call(.GET, "/labs", [API.Lab].self) }) {
            say("\(l.id)  \(l.scenario.padding(toLength: 20, withPad: " ", startingAt: 0))  \(l.hosts.map { "\($0.name)=\($0.address)" }.joined(separator: " "))  up since \(l.created)")
        }
    }
}

struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Run a command in a host of a lab on klab daemon; exits with the command's status.",
        discussion: prose("""
            The command runs as root in the host's network namespace (and klab's lab
            cgroup, so the tracer sees its sockets), its output (stdout and stderr
            together) streamed back as it comes. Killed by a signal: exit status 128+N.
            Ctrl-C here stops it there.

              klab exec lab-1f2e3d4c a -- ping -c 2 198.18.0.2
              klab exec lab-1f2e3d4c b -- ip -br addr
            """))

    @Argument(help: "The lab's id (klab up printed it; klab ls lists them).") var lab: String
    @Argument(help: "A host of the lab (its name in hosts:).") var host: String
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []
    @OptionGroup var socket: SocketOption

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command after --: klab exec LAB HOST -- CMD [ARG…]") }
    }

    func run() throws {
        let client = socket.client, path = "/labs/\(lab)/exec", body = API.Exec(host: host, argv: command)
        let status: Int32 = try blocking {
            var status: Int32 = 70
            try await client.lines(path, body: body) { data in
                let l = try JSONDecoder().decode(API.ExecLine.self, from: data)
                if let o = l.output { FileHandle.standardOutput.write(Data(o.utf8)) }
                if let s = l.exit_status { status = Int32(s) }
                if let s = l.signal { status = 128 + Int32(s) }
            }
            return status
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take labs on klab daemon down: their commands stop, their hosts and folders go.")

    @Argument(help: "Lab ids.") var labs: [String]
    @OptionGroup var socket: SocketOption

    func run() throws {
        let client = socket.client
        for lab in labs {
            try blocking { try await client.call(.DELETE, "/labs/\(lab)") }
            say("\(lab) down")
        }
    }
}

struct Rm: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove runs from klab daemon: from its list, with their folders (status, log, results).",
        discussion: prose("""
            The daemon keeps every run (DATA/runs/RUN: its status, log and results folder,
            and its status in memory) until it is removed. A queued run is taken out of the
            queue and never plays; a running one is refused (remove it once it has
            finished). `klab run --daemon` copies the results into --out first. Examples:

              klab rm run-1f2e3d4c run-5a6b7c8d
              klab rm --finished      every run that has finished
            """))

    @Argument(help: "Run ids (klab ls --runs lists them).") var runs: [String] = []
    @Flag(help: "Remove every finished run (passed, failed, interrupted, error).") var finished = false
    @OptionGroup var socket: SocketOption

    func validate() throws {
        if runs.isEmpty && !finished { throw ValidationError("give run ids (klab ls --runs), or --finished") }
        if !runs.isEmpty && finished { throw ValidationError("give run ids or --finished, not both") }
    }

    func run() throws {
        let client = socket.client
        let ids = finished ? try blocking { try await client.call(.GET, "/runs", [API.Run].self) }.filter(\.state.finished).map(\.id) : runs
        for id in ids {
            try blocking { try await client.call(.DELETE, "/runs/\(id)") }
            say("\(id) removed")
        }
    }
}

extension Run {
    /// `klab run --daemon`: submits the files, waits for their runs, prints each run's log
    /// as it finishes and fetches its results folder into DIR/NAME.
    func runOnDaemon(base: String) throws {
        // The daemon's tracer was loaded once, with the daemon's own options; a run cannot change them.
        if tracing.level != "ip" || !tracing.toggles.isEmpty || !tracing.disabled.isEmpty || tracing.allSites {
            throw ValidationError(
                "--daemon: runs on the daemon log what the daemon's tracer logs (its --level, --events, --disable-backend and --all-sites, set when it started): start klab daemon with these options, or run without --daemon")
        }
        let client = socket.client
        let set = try Run.parameters(parameters)
        var submitted: [API.Run] = []
        for f in files {
            let s = try submission(f, set: set, options: f.hasSuffix(".pkt") ? pktOptions : [])
            let r = try blocking { try await client.call(.POST, "/runs", API.Run.self, body: s) }
            say("\(f): queued as \(r.id) on \(client.place)")
            submitted.append(r)
        }
        var finished: [API.Run] = []
        for r in submitted {
            var run = r
            while !run.state.finished {
                usleep(200_000)
                let id = r.id
                run = try blocking { try await client.call(.GET, "/runs/\(id)", API.Run.self) }
            }
            let id = run.id, dir = "\(base)/\(run.scenario)"
            let log = try blocking { try await client.text("/runs/\(id)/log") }
            say(log)
            let files = try blocking { try await client.call(.GET, "/runs/\(id)/results", [API.ResultFile].self) }
            for f in files {
                let target = "\(dir)/\(f.path)"
                try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try blocking { try await client.download("/runs/\(id)/results/\(f.path)", to: target) }
            }
            finished.append(run)
        }
        say("")
        for r in finished {
            say("\(r.state == .passed ? "PASS" : "FAIL")  \(r.scenario)  \(r.state == .passed || r.state == .failed ? "→ \(base)/\(r.scenario)" : "(\(r.state.rawValue))")  [\(r.id)]")
            for f in r.failures { say("      \(f)") }
        }
        if finished.contains(where: { $0.state == .interrupted }) { throw ExitCode(ExitCodes.interrupted) }
        if finished.contains(where: { $0.state != .passed }) { throw ExitCode(ExitCodes.failed) }
    }
}

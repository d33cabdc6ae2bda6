import CKlabLinux
import Foundation
import Hummingbird
import KlabClient
import KlabScenario
import KlabSystem
import Logging
import NIOCore
import ServiceLifecycle

/// klab daemon: labs that stay up, runs, commands in lab hosts and results, served as
/// HTTP/JSON on a Unix socket (openapi.yaml). Root; its clients need only the socket.
public struct Daemon: Sendable {
    public var socket: String
    /// Where labs' and runs' folders go.
    public var data: String
    /// The socket's group, when it exists: its members may use the daemon.
    public var group: String
    /// Runs played at once.
    public var jobs: Int
    /// Also serve on a loopback TCP port, with a bearer token.
    public var listener: Listener?
    public var logger: Logger

    public static let defaultSocket = "/run/klab/klab.sock"
    public static let defaultData = "/var/lib/klab"

    public init(socket: String = Daemon.defaultSocket, data: String = Daemon.defaultData, group: String = "klab", jobs: Int = 1, listener: Listener? = nil, logger: Logger) {
        (self.socket, self.data, self.group, self.jobs, self.listener, self.logger) = (socket, data, group, jobs, listener, logger)
    }

    /// Serves until SIGTERM or SIGINT, then takes every lab down, stops the runs and removes
    /// the socket file. `makeRunner` builds klab's runner (its tracer settings and log).
    public func run(makeRunner: (@escaping @Sendable (String) -> Void) throws -> Runner) async throws {
        try Preflight.check()
        Daemon.keepMallocFromHoarding()
        // A client that goes away mid-answer is an error on its connection, not a signal.
        signal(SIGPIPE, SIG_IGN)
        // A parent may have spawned the daemon with SIGTERM and SIGINT blocked (posix_spawn keeps the mask).
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for s in [SIGTERM, SIGINT] { sigaddset(&unblock, s) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        // What a daemon killed before it could clean up left behind.
        let dir = (socket as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir.isEmpty ? "." : dir, withIntermediateDirectories: true)
        if try Recovery.socket(socket) { logger.notice("removed the socket file a stopped daemon left: \(socket)") }
        for name in Recovery.cgroups(logger: logger) { logger.notice("removed the lab cgroup a stopped klab left: \(name)") }
        for name in Recovery.labs(in: "\(data)/labs") { logger.notice("removed the folder of a lab a stopped daemon left: \(data)/labs/\(name)") }
        for name in Recovery.strayRuns(in: "\(data)/runs") {
            logger.notice("removed a run folder without status.json (a removal or submission a stopped daemon left half done): \(data)/runs/\(name)")
        }
        let madeToken = Listener.tokenFile(socket: socket)
        let token = try listener.map { try $0.token(made: madeToken) }
        defer { if listener != nil && listener?.tokenFile == nil { unlink(madeToken) } }

        let state = try State(data: data, jobs: jobs, logger: logger, makeRunner: makeRunner)
        let socket = self.socket, group = self.group, logger = self.logger
        let app = Application(
            router: Routes.router(state),
            // HTTP/1.1: idle connections closed after 60 s, a slow request cut off (RequestDeadline).
            server: .http1(configuration: .init(additionalChannelHandlers: [RequestDeadline()], idleTimeout: .seconds(60))),
            configuration: ApplicationConfiguration(address: .unixDomainSocket(path: socket), serverName: "klab"),
            onServerRunning: { _ in
                Daemon.protect(socket, group: group, logger: logger)
                logger.notice("klab daemon \(getpid()) serving \(socket), data in \(state.data), \(state.jobs) run\(state.jobs == 1 ? "" : "s") at once")
            },
            logger: logger)
        var servers: [any Service] = [app]
        if let listener, let token {
            let url = "http://\(listener.host.contains(":") ? "[\(listener.host)]" : listener.host)"
            servers.append(Application(
                responder: Listener.gate(Routes.router(state).buildResponder(), token: token),
                server: .http1(configuration: .init(additionalChannelHandlers: [RequestDeadline()], idleTimeout: .seconds(60))),
                configuration: ApplicationConfiguration(address: .hostname(listener.host, port: listener.port), serverName: "klab"),
                onServerRunning: { channel in
                    let port = channel.localAddress?.port ?? listener.port
                    let where_ = listener.tokenFile.map { "in \($0)" } ?? "made now, in \(madeToken) (mode 0600, root only; it goes when the daemon stops)"
                    logger.notice("klab daemon also serving \(url):\(port), Authorization: Bearer TOKEN, the token \(where_)")
                },
                logger: logger))
        }
        let services = ServiceGroup(
            services: servers + [Teardown(state: state)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        defer {
            unlink(socket)
            logger.notice("klab daemon stopped; removed \(socket)")
        }
        try await services.run()
    }

    /// Fixes glibc malloc's two thresholds, which it otherwise raises to the largest block freed
    /// so far (up to 32 MiB, and 64 MiB to trim). A run allocates tens of MiB for a moment (its
    /// capture and event buffers, its check) on threads of its own, spread over up to 8 arenas
    /// a CPU; with the raised thresholds each arena kept its peak, and the daemon's RSS climbed
    /// from 96 to 183 MiB over 1,000 runs while malloc had 4.4 MiB in use (BENCHMARKS.md, "klab
    /// daemon under load and over many runs"). Now a block of 256 KiB or more is its own
    /// mapping, unmapped when freed, and an arena gives back any free top over 1 MiB.
    static func keepMallocFromHoarding() {
        mallopt(M_MMAP_THRESHOLD, 256 << 10)
        mallopt(M_TRIM_THRESHOLD, 1 << 20)
    }

    /// Mode 0660, group `group` when it exists (else root's only).
    static func protect(_ path: String, group: String, logger: Logger) {
        if let g = getgrnam(group) {
            if chown(path, 0, g.pointee.gr_gid) != 0 { logger.error("chown(\(path), root:\(group)): \(String(cString: strerror(errno)))") }
        } else {
            var st = stat()
            if stat(path, &st) == 0, st.st_gid != 0 {
                // A set-group-ID folder gave it its group: a container's socket volume, whose host group the container may not name.
                logger.notice("no group '\(group)' here: \(path) keeps gid \(st.st_gid), its folder's, whose members may use it")
            } else {
                logger.notice("no group '\(group)' on this machine: only root can use \(path) (groupadd --system \(group), then usermod -aG \(group) USER)")
            }
        }
        if chmod(path, 0o660) != 0 { logger.error("chmod(\(path), 0660): \(String(cString: strerror(errno)))") }
    }
}

/// Waits for the graceful shutdown (SIGTERM, SIGINT) and then takes the labs down. It is the
/// group's last service, so it is told first: open exec streams end before the server stops.
struct Teardown: Service {
    let state: State
    func run() async throws {
        try? await gracefulShutdown()
        await state.shutdown()
    }
}

import Foundation
import KlabClient
import KlabSystem
import Logging

/// What a daemon that died without cleaning up (kill -9, a crash, the machine's power) left
/// behind, found and removed at the next start. Its namespaces and TUN links died with it
/// (they are anonymous, held by its threads and fds), and so did its BPF links (fds, none
/// pinned). What outlives it: the socket file, its lab cgroup with the commands still
/// running in its hosts (they keep the hosts' namespaces alive), its labs' folders, and the
/// state of its runs.
enum Recovery {
    /// Stops the processes left in the lab cgroups of klab processes that no longer run
    /// (cgroup.kill), then removes those cgroups. Only cgroups named as klab names its own
    /// (`klab-PID-START-TAG`) whose owner is gone are touched, and only when every process
    /// left in one is in this daemon's PID namespace: a klab in another one (a container's
    /// seen from the host, the host's seen from a container, in the host's cgroup namespace)
    /// looks dead from here, and its lab must not be killed.
    static func cgroups(logger: Logger) -> [String] {
        guard let root = Mounts.find(type: "cgroup2"), let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        var removed: [String] = []
        for name in names {
            guard let owner = LabCgroup.Owner(cgroupName: name), !owner.isAlive else { continue }
            let path = "\(root)/\(name)"
            let procs = (try? String(contentsOfFile: "\(path)/cgroup.procs", encoding: .utf8)) ?? ""
            // A process of another PID namespace is listed as 0, or by a PID of that namespace.
            guard procs.split(separator: "\n").allSatisfy({ pid_t($0).map(Recovery.inOurPIDNamespace) ?? false }) else { continue }
            if !procs.isEmpty {
                logger.notice("stopping what a dead klab (pid \(owner.pid)) left running in \(path): pids \(procs.split(separator: "\n").joined(separator: " "))")
                if FileManager.default.fileExists(atPath: "\(path)/cgroup.kill") {
                    try? Data("1".utf8).write(to: URL(fileURLWithPath: "\(path)/cgroup.kill"))
                } else {
                    for pid in procs.split(separator: "\n").compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
                }
            }
            // The kernel empties the cgroup as the processes exit.
            for _ in 0..<(procs.isEmpty ? 1 : 200) where rmdir(path) != 0 && errno == EBUSY { usleep(10_000) }
            if !FileManager.default.fileExists(atPath: path) { removed.append(name) }
        }
        return removed
    }

    /// Whether process `pid` is in this process's PID namespace (/proc/PID/ns/pid).
    static func inOurPIDNamespace(_ pid: pid_t) -> Bool {
        var mine = stat(), its = stat()
        guard pid > 0, stat("/proc/self/ns/pid", &mine) == 0, stat("/proc/\(pid)/ns/pid", &its) == 0 else { return false }
        return mine.st_dev == its.st_dev && mine.st_ino == its.st_ino
    }

    /// The runs' states; those a dead daemon left queued or running become interrupted.
    static func runs(in folder: String) -> [API.Run] {
        guard let ids = try? FileManager.default.contentsOfDirectory(atPath: folder) else { return [] }
        let dec = JSONDecoder(), enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        var out: [API.Run] = []
        for id in ids {
            let path = "\(folder)/\(id)/status.json"
            guard let data = FileManager.default.contents(atPath: path), var run = try? dec.decode(API.Run.self, from: data) else { continue }
            if !run.state.finished {
                run.failures.append("interrupted: the daemon that ran it stopped without finishing it (killed, or it crashed)")
                run.state = .interrupted
                run.finished = ISO8601DateFormatter().string(from: Date())
                try? enc.encode(run).write(to: URL(fileURLWithPath: path))
            }
            out.append(run)
        }
        return out
    }

    /// Run folders without a status.json: a removal (DELETE /runs/{run}) or a submission that
    /// a daemon killed half-way left. No run owns them: they go.
    static func strayRuns(in folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { name in
            name.hasPrefix("run-") && !FileManager.default.fileExists(atPath: "\(folder)/\(name)/status.json")
                && (try? FileManager.default.removeItem(atPath: "\(folder)/\(name)")) != nil
        }
    }

    /// Labs do not outlive their daemon: their folders go.
    static func labs(in folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.filter { (try? FileManager.default.removeItem(atPath: "\(folder)/\($0)")) != nil }
    }

    /// A socket file at `path`: removed when no daemon answers on it; an error when one does.
    static func socket(_ path: String) throws -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0 else { return false }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw DaemonError.failed("\(path) exists and is not a socket: remove it or give another --socket")
        }
        if Recovery.answers(path) { throw DaemonError.failed("another klab daemon is serving \(path)") }
        unlink(path)
        return true
    }

    /// Whether something accepts connections on the Unix socket `path`.
    static func answers(_ path: String) -> Bool {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { return false }
        withUnsafeMutableBytes(of: &addr.sun_path) { for (i, b) in bytes.enumerated() { $0[i] = b } }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }
}

import Foundation

/// The lab's cgroup v2. klab moves itself in, so every socket it or its children create is
/// charged to it, and the tracer's cgroup hooks see exactly the lab's sockets. Removed when
/// the last owner lets go of it (or by `remove`); the cgroups of runs that were killed are
/// reclaimed at the next start.
///
/// Its name says which klab made it: `klab-PID-START-TAG`, where START is that process's
/// start time (field 22 of /proc/PID/stat, clock ticks since boot), so a PID reused by
/// another process does not look like the owner, and TAG is random, so two klabs that are
/// both PID 1 in their containers, started in the same tick, still get two cgroups.
public final class LabCgroup: @unchecked Sendable {
    public static let prefix = "klab-"
    public let path: String
    /// Open on the cgroup's folder: what cgroup BPF programs attach to.
    public let fd: Int32
    private let original: String
    private var removed = false

    public init() throws {
        guard let root = Mounts.find(type: "cgroup2") else { throw Requirement(Preflight.missingCgroup2) }
        LabCgroup.reclaim(root: root)
        let mine = try KernelFile.text("/proc/self/cgroup")
            .split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? "/"
        original = root + (mine == "/" ? "" : mine)
        guard let me = Owner(pid: getpid()) else { throw LabError("read(/proc/self/stat)", errno: ENOENT) }
        // Another klab's reclaim, in a PID namespace where this klab's PID means nothing, may
        // remove the cgroup between mkdir and the move into it: then take another name.
        var attempt = 0
        while true {
            attempt += 1
            let path = "\(root)/\(me.cgroupName(tag: UInt32.random(in: 0...UInt32.max)))"
            if mkdir(path, 0o755) != 0 {
                let e = errno
                if e == EEXIST && attempt < 3 { continue }
                if e == EROFS || e == EACCES || e == EPERM { throw Requirement(LabCgroup.readOnly(root, errno: e)) }
                throw LabError("mkdir(\(path))", errno: e)
            }
            let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            do {
                if fd < 0 { throw LabError("open(\(path))") }
                try LabCgroup.write("\(getpid())", to: "\(path)/cgroup.procs")
            } catch let error as LabError where error.errno == ENOENT && attempt < 3 {
                if fd >= 0 { close(fd) }
                continue
            } catch {
                if fd >= 0 { close(fd) }
                rmdir(path)
                throw error
            }
            (self.path, self.fd) = (path, fd)
            return
        }
    }

    deinit { remove() }

    /// Moves klab back where it was and removes the lab cgroup, now rather than when the last
    /// owner lets go (klab exits with exit(), which runs no deinit). Once only.
    public func remove() {
        guard !removed else { return }
        removed = true
        try? LabCgroup.write("\(getpid())", to: "\(original)/cgroup.procs")
        close(fd)
        rmdir(path)
    }

    static func write(_ text: String, to file: String) throws {
        let fd = try sys("open(\(file))") { open(file, O_WRONLY | O_CLOEXEC) }
        defer { close(fd) }
        try text.withCString { s in _ = try sys("write(\(file))") { Glibc.write(fd, s, strlen(s)) } }
    }

    static func readOnly(_ root: String, errno e: Int32) -> String {
        "cannot create the lab cgroup under \(root): \(Errno.text(e)): "
            + (Container.engine != nil ? Container.add("-v \(root):\(root) (read-write)") : "the cgroup v2 hierarchy must be writable by root")
    }

    /// Removes the klab cgroups under `root` that a dead klab left: the name is one klab
    /// gives (`klab-PID-START-TAG`, or `klab-PID` from earlier versions) and no live process
    /// has that PID and start time. A cgroup that still holds a process is never removed
    /// (the kernel refuses: EBUSY), which also protects a live klab in another PID namespace.
    /// - Returns: the names removed.
    @discardableResult
    public static func reclaim(root: String) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return [] }
        return names.filter { name in
            guard let owner = Owner(cgroupName: name), !owner.isAlive else { return false }
            return rmdir("\(root)/\(name)") == 0
        }
    }

    /// The klab process a lab cgroup belongs to.
    public struct Owner: Equatable, Sendable {
        public let pid: Int32
        /// Start time in clock ticks since boot; nil in names from earlier versions (`klab-PID`).
        public let start: UInt64?

        /// The process `pid` now, from /proc/PID/stat; nil when there is none.
        public init?(pid: Int32) {
            guard let stat = try? KernelFile.text("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
            // After "PID (comm)": field 3 (state) onwards; starttime is field 22.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
            (self.pid, self.start) = (pid, start)
        }

        /// Parses `klab-PID-START-TAG` or `klab-PID`; nil for any other name.
        public init?(cgroupName name: String) {
            guard name.hasPrefix(LabCgroup.prefix) else { return nil }
            let parts = name.dropFirst(LabCgroup.prefix.count).split(separator: "-", omittingEmptySubsequences: false)
            guard let pid = Int32(parts[0]), pid > 0 else { return nil }
            switch parts.count {
            case 1: (self.pid, self.start) = (pid, nil)
            case 3 where parts[2].count == 8 && UInt32(parts[2], radix: 16) != nil:
                guard let start = UInt64(parts[1]) else { return nil }
                (self.pid, self.start) = (pid, start)
            default: return nil
            }
        }

        public func cgroupName(tag: UInt32) -> String {
            let hex = String(tag, radix: 16)
            return "\(LabCgroup.prefix)\(pid)-\(start ?? 0)-\(String(repeating: "0", count: 8 - hex.count))\(hex)"
        }

        /// Whether a process with this PID (and start time, when known) runs in klab's PID namespace.
        public var isAlive: Bool {
            guard let now = Owner(pid: pid) else { return false }
            return start == nil || now.start == start
        }
    }
}

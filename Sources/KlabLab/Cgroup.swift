import Foundation

/// The lab's cgroup v2. klab moves itself in, so every socket it or its children create is
/// charged to it, and the tracer's cgroup hooks see exactly the lab's sockets. Removed on
/// exit; folders left by runs that were killed are reclaimed at the next start.
public final class LabCgroup: @unchecked Sendable {
    public static let prefix = "klab-"
    public let path: String
    public let fd: Int32
    private let original: String

    public init() throws {
        guard let root = Mounts.find(type: "cgroup2") else {
            throw Requirement("no cgroup v2 hierarchy is mounted: run lab/setup, or mount -t cgroup2 none /sys/fs/cgroup")
        }
        LabCgroup.reclaim(root: root)
        let mine = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
            .split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? "/"
        original = root + (mine == "/" ? "" : mine)
        path = "\(root)/\(LabCgroup.prefix)\(getpid())"
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw LabError("mkdir(\(path))", hint: "the cgroup v2 hierarchy must be writable")
        }
        fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        do {
            if fd < 0 { throw LabError("open(\(path))") }
            try LabCgroup.write("\(getpid())", to: "\(path)/cgroup.procs")
        } catch {
            if fd >= 0 { Glibc.close(fd) }
            rmdir(path)
            throw error
        }
    }

    /// Moves klab back where it was and removes the lab cgroup.
    public func remove() {
        try? LabCgroup.write("\(getpid())", to: "\(original)/cgroup.procs")
        if fd >= 0 { Glibc.close(fd) }
        rmdir(path)
    }

    static func write(_ text: String, to file: String) throws {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LabError("open(\(file))") }
        defer { Glibc.close(fd) }
        let n = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        if n < 0 { throw LabError("write(\(file))") }
    }

    /// Removes klab-PID cgroups whose process is gone (a run that was killed).
    static func reclaim(root: String) {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return }
        for name in names where name.hasPrefix(prefix) {
            guard let pid = Int32(name.dropFirst(prefix.count)), kill(pid, 0) != 0, errno == ESRCH else { continue }
            rmdir("\(root)/\(name)")
        }
    }
}

import Glibc

/// Files of /proc and /sys, read to their end. Their size is unknown until read (stat says 0
/// or 4096), and the kernel hands them out a page at a time, so one read() or Foundation's
/// `String(contentsOfFile:)` can stop short: a 4,102-byte mountinfo came back as 4,035 bytes
/// in a container, and the cgroup2 line was in the part that was lost.
public enum KernelFile {
    /// Every byte of `path`, read() until it returns 0.
    public static func bytes(_ path: String) throws -> [UInt8] {
        let fd = try sys("open(\(path))") { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try chunk.withUnsafeMutableBytes { b in try sys("read(\(path))") { read(fd, b.baseAddress, b.count) } }
            if n == 0 { return out }
            out += chunk[..<n]
        }
    }

    /// The file as text (invalid UTF-8 becomes U+FFFD).
    public static func text(_ path: String) throws -> String {
        String(decoding: try bytes(path), as: UTF8.self)
    }
}

/// The mounts of klab's mount namespace, from /proc/self/mountinfo.
public enum Mounts {
    /// The mount point of the first filesystem of this type, or nil.
    public static func find(type: String) -> String? { entry(type: type)?.point }

    /// The first filesystem of this type: its mount point, and the folder of the filesystem
    /// mounted there. For cgroup2 that folder is relative to klab's cgroup namespace: "/.."
    /// when the mount's root lies above the namespace's (a container with a cgroup namespace
    /// of its own, given the host's hierarchy).
    public static func entry(type: String) -> (point: String, root: String)? {
        guard let text = try? KernelFile.text("/proc/self/mountinfo") else { return nil }
        for line in text.split(separator: "\n") {
            // "36 35 0:30 / /sys/kernel/tracing rw,... - tracefs nodev rw"
            let halves = line.split(separator: " - ", omittingEmptySubsequences: false)
            guard halves.count == 2, halves[1].split(separator: " ").first.map(String.init) == type else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count > 4 { return (String(fields[4]), String(fields[3])) }
        }
        return nil
    }
}

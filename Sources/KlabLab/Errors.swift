import Foundation
@_exported import KlabSchema

/// A failed kernel call: the call, its errno, and what the user can do about it.
public struct LabError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public let hint: String?

    public init(_ call: String, errno: Int32 = Glibc.errno, hint: String? = nil) {
        self.call = call
        self.errno = errno
        self.hint = hint
    }

    public var description: String {
        let reason = errno == 0 ? "" : ": \(String(cString: strerror(errno)))"
        return "\(call) failed\(reason)" + (hint.map { " (\($0))" } ?? "")
    }
}

/// Runs a libc call that returns -1 and sets errno, retrying on EINTR.
@discardableResult @inlinable @inline(__always)
func sys(_ name: @autoclosure () -> String, hint: String? = nil, _ body: () -> Int32) throws -> Int32 {
    while true {
        let r = body()
        if r >= 0 { return r }
        if errno == EINTR { continue }
        throw LabError(name(), hint: hint)
    }
}

/// Checks what every privileged part of klab needs, so a run fails before it starts.
public enum Preflight {
    public static func check(tracing: Bool = true) throws {
        guard geteuid() == 0 else {
            throw Requirement("klab must run as root (it creates network namespaces, TUN devices and BPF programs): run it with sudo")
        }
        guard access("/dev/net/tun", R_OK | W_OK) == 0 else {
            throw Requirement("/dev/net/tun is missing: load the tun module (modprobe tun) or, in a container, pass --device /dev/net/tun")
        }
        guard tracing else { return }
        guard access("/sys/kernel/btf/vmlinux", R_OK) == 0 else {
            throw Requirement("kernel BTF (/sys/kernel/btf/vmlinux) is missing: the tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF, and a container needs -v /sys/kernel/btf:/sys/kernel/btf:ro")
        }
        guard Mounts.find(type: "tracefs") != nil else {
            throw Requirement("tracefs is not mounted: run lab/setup, or mount -t tracefs nodev /sys/kernel/tracing")
        }
        guard Mounts.find(type: "cgroup2") != nil else {
            throw Requirement("no cgroup v2 hierarchy is mounted: run lab/setup, or mount -t cgroup2 none /sys/fs/cgroup")
        }
    }
}

/// /proc/self/mountinfo, read when needed.
public enum Mounts {
    /// The mount point of the first filesystem of this type.
    public static func find(type: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            // "36 35 0:30 / /sys/kernel/tracing rw,... - tracefs nodev rw"
            let halves = line.components(separatedBy: " - ")
            guard halves.count == 2, halves[1].split(separator: " ").first.map(String.init) == type else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count > 4 { return String(fields[4]) }
        }
        return nil
    }
}

import Foundation
import Testing

/// lab/kernel-rig: commands run under Debian's pinned 6.1 kernel in qemu (software emulation),
/// with the host's / shared into the guest. Each boot costs about 5 s; the suite boots four
/// times. Privileged: needs root (fetch installs qemu and caches the kernel in /var/cache).
/// If the kernel cannot be fetched the tests skip with the reason, or fail under CI=true.
@Suite(.serialized, .scratch, .emulated)
struct KernelRigTests {
    static let rigPath = "\(packageRoot)/lab/kernel-rig"

    /// Runs lab/kernel-rig from the package root. Its output goes to files, so neither stream
    /// can block the other.
    static func rig(_ args: [String]) throws -> Finished {
        let dir = try temporaryDirectory(removedByCaller: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let outPath = "\(dir)/stdout", errPath = "\(dir)/stderr"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        let p = Process()
        p.executableURL = URL(fileURLWithPath: rigPath)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = out
        p.standardError = err
        try p.run()
        p.waitUntilExit()
        try out.close()
        try err.close()
        return Finished(status: p.terminationStatus,
                        stdout: try String(contentsOfFile: outPath, encoding: .utf8),
                        stderr: try String(contentsOfFile: errPath, encoding: .utf8))
    }

    /// Runs CMD in the guest, with a timeout well below the suite's budget.
    static func guest(_ command: [String], timeout: Int = 120) throws -> Finished {
        try rig(["run", "--timeout", "\(timeout)", "--"] + command)
    }

    /// Why the pinned kernel cannot be had, or nil once `lab/kernel-rig fetch` succeeded
    /// (fetched once per test process; seconds when already cached).
    static let fetchFailure: String? = {
        do {
            let r = try rig(["fetch"])
            return r.status == 0 ? nil : "lab/kernel-rig fetch exited \(r.status): \(r.stderr)"
        } catch {
            return "cannot start lab/kernel-rig: \(error)"
        }
    }()

    /// Privileged, and the kernel is there; under CI=true a failed fetch runs the tests anyway
    /// so that they fail on it.
    static var enabled: Bool {
        guard Privileged.enabled else { return false }
        if let guest = ProcessInfo.processInfo.environment["KLAB_GUEST"] {
            print("SKIP kernel-rig test: already inside the rig's \(guest) guest (no qemu inside qemu)")
            return false
        }
        if let fetchFailure, !Privileged.ci {
            print("SKIP kernel-rig test: \(fetchFailure) (with CI=true this fails)")
            return false
        }
        return true
    }

    func requireKernel() throws {
        try #require(Self.fetchFailure == nil, "\(Self.fetchFailure ?? "")")
    }

    @Test(.enabled(if: KernelRigTests.enabled))
    func guestRunsAnotherKernel() throws {
        try requireKernel()
        var u = utsname()
        uname(&u)
        let host = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let r = try Self.guest(["uname", "-r"])
        #expect(r.status == 0, "\(r.stderr)")
        let guest = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(guest.hasPrefix("6.1.0-") && guest.hasSuffix("-amd64"), "guest kernel: \(guest)")
        #expect(guest != host)
        #expect(r.stderr.isEmpty, "\(r.stderr)")
    }

    /// stdout, stderr and the exit status come back separately and byte for byte, and the
    /// command runs in the same working directory.
    @Test(.enabled(if: KernelRigTests.enabled))
    func streamsAndExitStatusComeBackExactly() throws {
        try requireKernel()
        let r = try Self.guest(["sh", "-c", "echo out; pwd -P; printf 'no newline'; echo err >&2; printf 'tab\\there' >&2; exit 3"])
        let cwd = URL(fileURLWithPath: packageRoot).resolvingSymlinksInPath().path
        #expect(r.status == 3)
        #expect(r.stdout == "out\n\(cwd)\nno newline")
        #expect(r.stderr == "err\ntab\there")
    }

    /// The guest has kprobes (a kprobe event can be defined), kernel BTF and /dev/net/tun.
    @Test(.enabled(if: KernelRigTests.enabled))
    func guestHasKprobesBTFAndTun() throws {
        try requireKernel()
        let script = """
            set -e
            T=/sys/kernel/tracing
            test -e $T/kprobe_events
            test -s /sys/kernel/btf/vmlinux
            test -c /dev/net/tun
            echo 'p:klab_rig_test icmp_rcv' >> $T/kprobe_events
            cat $T/kprobe_events
            """
        let r = try Self.guest(["sh", "-c", script])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("p:kprobes/klab_rig_test icmp_rcv"), "\(r.stdout)")
    }

    /// A Swift binary built on the host (linked against /opt/swift's runtime and the host's
    /// libbpf, libpcap and libnl) runs in the guest unchanged.
    @Test(.enabled(if: KernelRigTests.enabled))
    func hostSwiftBinaryRunsInGuest() throws {
        try requireKernel()
        try #require(FileManager.default.isExecutableFile(atPath: klabBinary), "no klab binary at \(klabBinary) (swift build)")
        let r = try Self.guest([URL(fileURLWithPath: klabBinary, relativeTo: URL(fileURLWithPath: packageRoot)).path, "--help"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("klab"), "\(r.stdout)")
    }

    /// A guest that does not finish in time is killed: exit 124 and the console tail.
    @Test(.enabled(if: KernelRigTests.enabled))
    func timeoutKillsTheGuest() throws {
        try requireKernel()
        let start = Date()
        let r = try Self.guest(["sleep", "600"], timeout: 2)
        #expect(r.status == 124)
        #expect(r.stderr.contains("did not finish within 2 s"), "\(r.stderr)")
        #expect(Date().timeIntervalSince(start) < 30)
    }
}

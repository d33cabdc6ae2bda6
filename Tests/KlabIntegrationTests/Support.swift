import Foundation
import KlabPacket
import Testing

/// Whether this machine lets klab run for real. Elsewhere the privileged tests skip with the
/// reason; under CI=true they run anyway, so a missing privilege or feature fails them.
enum Privileged {
    static let ci = ProcessInfo.processInfo.environment["CI"] == "true"

    static let missing: String? = {
        if geteuid() != 0 { return "not root" }
        if access("/dev/net/tun", R_OK | W_OK) != 0 { return "no /dev/net/tun" }
        if access("/sys/kernel/btf/vmlinux", R_OK) != 0 { return "no kernel BTF" }
        return nil
    }()

    /// Whether a tool the test needs is installed: elsewhere the test skips with the reason;
    /// under CI=true it runs and fails on the missing tool (lab/setup installs it).
    static func has(_ path: String, from package: String) -> Bool {
        if FileManager.default.isExecutableFile(atPath: path) || ci { return true }
        print("SKIP klab test: no \(path) (Debian package \(package); lab/setup installs it; with CI=true this fails)")
        return false
    }

    /// False inside lab/kernel-rig's guest (KLAB_GUEST), with the reason printed.
    static func outsideGuest(_ what: String, _ why: String) -> Bool {
        guard let guest = ProcessInfo.processInfo.environment["KLAB_GUEST"] else { return true }
        print("SKIP \(what) inside the rig's \(guest) guest: \(why)")
        return false
    }

    static var enabled: Bool {
        if let missing, !ci {
            print("SKIP privileged klab test: \(missing) (run lab/test as root; with CI=true this fails)")
            return false
        }
        return true
    }
}

/// The klab binary the tests run: KLAB_BINARY (lab/test sets it to a release build, as users
/// run klab: real programs at full speed need it), else the one `swift build` made beside the
/// test bundle.
let klabBinary: String = {
    if let b = ProcessInfo.processInfo.environment["KLAB_BINARY"], !b.isEmpty { return b }
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [dir.appendingPathComponent("klab").path, ".build/debug/klab"] where FileManager.default.isExecutableFile(atPath: candidate) {
        return candidate
    }
    return ".build/debug/klab"
}()

let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

struct Finished {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs klab to completion, as another user when `user` is given.
func klab(_ args: [String], asUser user: String? = nil, environment: [String: String] = [:]) throws -> Finished {
    guard let user else { return try run(klabBinary, args, environment: environment) }
    return try run("/usr/bin/setpriv", ["--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--", klabBinary] + args, environment: environment)
}

/// Runs a program to completion from the package root.
func run(_ program: String, _ args: [String], environment: [String: String] = [:]) throws -> Finished {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = args
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    p.currentDirectoryURL = URL(fileURLWithPath: packageRoot)
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Finished(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// The names (without `suffix`) of the files shipped in `folder` of the package, sorted, for a
/// parameterized test. A folder that cannot be listed, or lists nothing, is one case that fails.
func shippedNames(in folder: String, ending suffix: String) -> [String] {
    let dir = "\(packageRoot)/\(folder)"
    let files = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    let names = files.filter { $0.hasSuffix(suffix) }.map { String($0.dropLast(suffix.count)) }.sorted()
    return names.isEmpty ? ["(nothing ending \(suffix) in \(dir))"] : names
}

/// A folder for one test's files. The `.scratch` trait (on every suite that makes files)
/// removes it when the test passes; a failing test keeps it and its issues say where.
func temporaryDirectory(removedByCaller: Bool = false) throws -> String {
    let d = FileManager.default.temporaryDirectory.appendingPathComponent("klab-test-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    if removedByCaller { return d }
    guard let scratch = Scratch.current else {
        Issue.record("temporaryDirectory() outside a .scratch test: \(d) would be left behind")
        return d
    }
    scratch.add(d)
    return d
}

/// Removes the folders a test made once it ends without an issue; with an issue, each issue
/// says where they are.
struct Scratch: TestTrait, SuiteTrait, TestScoping {
    final class Folders: @unchecked Sendable {  // guarded by lock
        private let lock = NSLock()
        private var paths: [String] = []
        private var failed = false
        func add(_ path: String) { lock.withLock { paths.append(path) } }
        func fail() -> [String] { lock.withLock { failed = true; return paths } }
        func end() -> (failed: Bool, paths: [String]) { lock.withLock { (failed, paths) } }
    }
    @TaskLocal static var current: Folders?

    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> Scratch? { testCase == nil ? nil : self }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let folders = Folders()
        let noteIssues: IssueHandlingTrait = .compactMapIssues { issue in
            var issue = issue
            let paths = folders.fail()
            if !paths.isEmpty { issue.comments.append("files kept in \(paths.joined(separator: ", "))") }
            return issue
        }
        defer {
            let (failed, paths) = folders.end()
            if failed {
                if !paths.isEmpty { print("\(test.name) left its files in \(paths.joined(separator: ", "))") }
            } else {
                for p in paths { try? FileManager.default.removeItem(atPath: p) }
            }
        }
        try await Scratch.$current.withValue(folders) {
            do {
                try await noteIssues.provideScope(for: test, testCase: testCase, performing: function)
            } catch {
                _ = folders.fail()
                throw error
            }
        }
    }
}

extension Trait where Self == Scratch {
    static var scratch: Self { Scratch() }
}

/// Tests that time things or pin CPUs take the machine alone; the qemu guests (a CPU each,
/// emulated) share it among themselves but never with a timed test.
struct MachineUse: TestTrait, SuiteTrait, TestScoping {
    let exclusive: Bool
    var gate = Gate.shared
    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> MachineUse? { testCase == nil ? nil : self }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        await gate.enter(exclusive: exclusive)
        do { try await function() } catch {
            await gate.leave(exclusive: exclusive)
            throw error
        }
        await gate.leave(exclusive: exclusive)
    }

    /// A readers-writer gate, first come first served.
    actor Gate {
        static let shared = Gate()
        static let pidOne = Gate()
        private var sharing = 0
        private var held = false
        private var waiting: [(exclusive: Bool, resume: CheckedContinuation<Void, Never>)] = []

        private func free(_ exclusive: Bool) -> Bool { !held && (!exclusive || sharing == 0) }
        private func take(_ exclusive: Bool) { if exclusive { held = true } else { sharing += 1 } }

        func enter(exclusive: Bool) async {
            if waiting.isEmpty && free(exclusive) { return take(exclusive) }
            await withCheckedContinuation { waiting.append((exclusive, $0)) }
        }

        func leave(exclusive: Bool) {
            if exclusive { held = false } else { sharing -= 1 }
            while let next = waiting.first, free(next.exclusive) {
                waiting.removeFirst()
                take(next.exclusive)
                next.resume.resume()
            }
        }
    }
}

extension Trait where Self == MachineUse {
    /// Timing or CPU pinning: runs with no guest and no other timed test.
    static var timed: Self { MachineUse(exclusive: true) }
    /// A qemu guest: runs beside other guests, never beside a timed test.
    static var emulated: Self { MachineUse(exclusive: false) }
    /// Minutes of every core that time nothing (an image build): as a guest does.
    static var heavy: Self { MachineUse(exclusive: false) }
    /// Makes and counts the lab cgroups of a klab that is PID 1 (klab-1-…, as in a container or
    /// a PID namespace): one such test at a time, or one would count the other's.
    static var pidOneCgroups: Self { MachineUse(exclusive: true, gate: .pidOne) }
}

/// A pcap file read without libpcap, so the test checks the format klab wrote, with its
/// capture.frames beside it when there is one (link, direction, packet id of each frame).
struct PcapFile {
    struct Record {
        let seconds: UInt32
        let fraction: UInt32
        /// The packet's length on the wire; `bytes` may keep less (the snaplen).
        let length: Int
        let bytes: [UInt8]
        var link = 0
        var intoHost = false
        /// A delivery of a packet another lab host sent (its sent frame is in the file too).
        var forwarded = false
        var packetID: UInt64 = 0
        var seconds1e9: Double { Double(seconds) + Double(fraction) / 1e9 }
    }
    let nanosecond: Bool
    let linkType: UInt32
    let records: [Record]

    init(path: String) throws {
        let d = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        func u32(_ o: Int) -> UInt32 { UInt32(d[o]) | UInt32(d[o + 1]) << 8 | UInt32(d[o + 2]) << 16 | UInt32(d[o + 3]) << 24 }
        guard d.count >= 24 else { throw CocoaError(.fileReadCorruptFile) }
        nanosecond = u32(0) == 0xa1b2_3c4d
        linkType = u32(20)
        var out: [Record] = []
        var o = 24
        while o + 16 <= d.count {
            let caplen = Int(u32(o + 8))
            guard o + 16 + caplen <= d.count else { throw CocoaError(.fileReadCorruptFile) }
            out.append(Record(seconds: u32(o), fraction: u32(o + 4), length: Int(u32(o + 12)), bytes: Array(d[(o + 16)..<(o + 16 + caplen)])))
            o += 16 + caplen
        }
        let sidecar = (path.hasSuffix(".pcap") ? String(path.dropLast(5)) : path) + ".frames"
        if let tags = FileManager.default.contents(atPath: sidecar).map([UInt8].init) {
            guard tags.count == out.count * 16 else { throw CocoaError(.fileReadCorruptFile) }
            for i in out.indices {
                let t = tags[(i * 16)..<(i * 16 + 16)]
                out[i].link = Int(t[t.startIndex])
                out[i].intoHost = t[t.startIndex + 1] & 0x80 != 0
                out[i].forwarded = t[t.startIndex + 1] & 0x02 != 0
                out[i].packetID = t[(t.startIndex + 8)...].reversed().reduce(0) { $0 << 8 | UInt64($1) }
            }
        }
        records = out
    }

    var packets: [Packet] { records.compactMap { try? Packet.parse($0.bytes) } }
}

/// events.jsonl: the header line and the events.
struct EventLog {
    let header: [String: Any]
    let events: [[String: Any]]

    init(path: String) throws {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
        func obj(_ l: Substring) throws -> [String: Any] {
            try JSONSerialization.jsonObject(with: Data(l.utf8)) as? [String: Any] ?? [:]
        }
        header = try obj(lines[0])
        events = try lines.dropFirst().map(obj)
    }

    func named(_ name: String) -> [[String: Any]] { events.filter { $0["event"] as? String == name } }

    /// Only the header line, without reading the rest of a large log.
    static func header(path: String) throws -> [String: Any] {
        guard let h = FileHandle(forReadingAtPath: path) else { throw CocoaError(.fileNoSuchFile) }
        defer { try? h.close() }
        var line = Data()
        while !line.contains(10), let chunk = try h.read(upToCount: 65536), !chunk.isEmpty { line.append(chunk) }
        return try JSONSerialization.jsonObject(with: line.prefix { $0 != 10 }) as? [String: Any] ?? [:]
    }
}

/// What `klab schema --json` reports for the running kernel: the tests expect the sites this
/// kernel offers (cgroup hooks and tracepoints here, fentry and kprobes on a stock kernel),
/// never one machine's list, so the same test passes on the host and in each guest.
struct KernelSelection: @unchecked Sendable {  // immutable once read
    let events: [[String: Any]]

    /// The selection with BACKENDS disabled, as a run with --disable-backend makes it.
    init(disabling backends: [String] = []) throws {
        let r = try klab(["schema", "--json"] + backends.flatMap { ["--disable-backend", $0] })
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "klab schema --json: \(r.status) \(r.stderr)"])
        }
        events = o["events"] as? [[String: Any]] ?? []
    }

    static let current = Result { try KernelSelection() }

    func site(_ name: String) -> (site: String?, placement: String?) {
        let e = events.first { $0["name"] as? String == name }
        return (e?["site"] as? String, e?["placement"] as? String)
    }

    var names: [String] { events.compactMap { $0["name"] as? String } }

    /// The probes of every chosen site (what a run attaches at the default level).
    var chosenProbes: Set<String> {
        Set(events.flatMap { e in
            (e["sites"] as? [[String: Any]] ?? []).filter { $0["status"] as? String == "chosen" }.flatMap { $0["probes"] as? [String] ?? [] }
        })
    }
}

func json(_ path: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] ?? [:]
}

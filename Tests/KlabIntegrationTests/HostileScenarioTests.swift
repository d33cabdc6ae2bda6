import Foundation
import Testing

/// Scenario files built to hurt (alias bombs, huge files and lines, binary data, FIFOs...):
/// `klab validate` rejects each one with FILE:LINE:COLUMN and exit 2, and its peak memory,
/// read back from the kernel with wait4(2), stays under 100 MB (a resource bound, not a
/// timing: lab/SCENARIOS.md, "Limits").
@Suite(.scratch) struct HostileScenarioTests {
    static let memoryLimitKB = 100 * 1024

    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        /// Makes the file at the given path.
        let make: @Sendable (String) throws -> Void
        let at: String  // "LINE:COLUMN"
        let says: String
        var testDescription: String { name }
    }

    static func text(_ s: String) -> @Sendable (String) throws -> Void { { try s.write(toFile: $0, atomically: false, encoding: .utf8) } }
    static func bytes(_ b: [UInt8]) -> @Sendable (String) throws -> Void { { try Data(b).write(to: URL(fileURLWithPath: $0)) } }

    /// The issue's bomb: nine lists of nine, each made of the one before: 9^9 leaves.
    static let aliasBomb = (["a: &a [x, x, x, x, x, x, x, x, x]"] + (1..<9).map { i -> String in
        let (me, prev) = (String(UnicodeScalar(97 + i)!), String(UnicodeScalar(96 + i)!))
        return "\(me): &\(me) [" + Array(repeating: "*\(prev)", count: 9).joined(separator: ", ") + "]"
    }).joined(separator: "\n") + "\n"

    static let cases: [Case] = [
        // a..d stand for 10, 91, 820 and 7381 nodes: e's first *d passes 10,000.
        Case(name: "alias bomb", make: text(aliasBomb), at: "5:8", says: "with this alias (it stands for 7381 nodes"),
        Case(name: "merge keys", make: text("base: &b0 {x: 1, y: 2}\n" + (1...20).map { "m\($0): &b\($0) {<<: *b\($0 - 1), <<: *b\($0 - 1)}" }.joined(separator: "\n") + "\n"),
             at: "11:16", says: "(it stands for 4093 nodes, 4092 bytes), the document has more than 10000 YAML nodes"),
        Case(name: "an alias to a long value", make: text("a: &a \(String(repeating: "b", count: 500_000))\nc: [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"),
             at: "2:33", says: "4 MiB of text"),  // the 8th alias: 8 x 500,000 + 500,002 bytes
        Case(name: "flow nesting", make: text(String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000) + "\n"),
             at: "1:65", says: "nested more than 64 deep"),
        Case(name: "flow nesting past libyaml's limit", make: text(String(repeating: "[", count: 100_000) + "\n"), at: "1:1", says: "nested more than 64 deep"),
        Case(name: "block nesting", make: text((0..<200).map { String(repeating: " ", count: $0) + "a:" }.joined(separator: "\n") + " 1\n"),
             at: "65:65", says: "nested more than 64 deep"),
        Case(name: "a million list items", make: text("steps:\n" + String(repeating: "- x\n", count: 1_000_000)), at: "262144:2", says: "larger than 1 MiB"),
        Case(name: "a million list items by alias", make: text("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: [" + String(repeating: "*a,", count: 100_000) + "]\n"),
             at: "2:2726", says: "more than 10000 YAML nodes"),  // alias 908: 15 + 908 x 11 nodes
        Case(name: "a long flow list", make: text("steps: [" + String(repeating: "1,", count: 400_000) + "]\n"), at: "1:20003", says: "more than 10000 YAML nodes"),  // item 9,998
        Case(name: "a line of 10 MB", make: text("name: " + String(repeating: "a", count: 10 << 20) + "\n"), at: "1:1048577", says: "larger than 1 MiB"),
        Case(name: "a file of 300 MB", make: { path in
            try "name: big\nsteps:\n".write(toFile: path, atomically: false, encoding: .utf8)
            #expect(truncate(path, 300 << 20) == 0)  // sparse: zeros after the text
        }, at: "3:1048560", says: "larger than 1 MiB"),  // byte 1,048,577: 17 bytes on lines 1-2
        Case(name: "invalid UTF-8", make: bytes(Array("name: ok\nsteps:\n  - inject: \"".utf8) + [0xFF, 0xFE] + Array("\"\n".utf8)),
             at: "3:14", says: "invalid UTF-8 (byte 0xFF): a scenario is UTF-8 text"),
        Case(name: "binary", make: bytes([0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00]), at: "1:8", says: "a NUL byte: this is a binary file"),
        Case(name: "UTF-16", make: bytes([0xFF, 0xFE] + Array("name: x\n".utf16.flatMap { [UInt8($0), 0] })), at: "1:1", says: "UTF-16 text; scenario files are UTF-8"),
        Case(name: "a long parameter used many times", make: text("params: {X: \(String(repeating: "a", count: 400_000))}\nname: p\nsteps:\n" + String(repeating: "- ${X}\n", count: 1000)),
             at: "14:3", says: "with ${X} replaced, the scenario's text passes 4 MiB"),  // the 11th ${X}
        Case(name: "many hosts", make: text("hosts:\n" + String(repeating: "- {}\n", count: 300) + "steps: []\n"), at: "2:1", says: "at most 250 hosts"),
        Case(name: "a FIFO", make: { #expect(mkfifo($0, 0o600) == 0) }, at: "1:1", says: "is a FIFO (named pipe): a scenario is a regular file"),
        Case(name: "a directory", make: { try FileManager.default.createDirectory(atPath: $0, withIntermediateDirectories: false) },
             at: "1:1", says: "is a directory"),
        Case(name: "/dev/zero", make: { #expect(symlink("/dev/zero", $0) == 0) }, at: "1:1", says: "is a character device"),
    ]

    @Test(arguments: cases)
    func rejectedWhereItIsWithBoundedMemory(_ c: Case) throws {
        try expectRejected(c, as: "hostile.yaml")
    }

    /// `klab validate` on the case's file named `name`: exit 2, FILE:LINE:COLUMN and the
    /// message, under the memory bound.
    func expectRejected(_ c: Case, as name: String) throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = "\(dir)/\(name)"
        try c.make(file)
        let r = try klabMeasured(["validate", file], in: dir)
        #expect(r.status == 2, "\(r.stderr.prefix(500))")
        #expect(r.stderr.hasPrefix("\(file):\(c.at): error: "), "\(r.stderr.prefix(500))")
        #expect(r.stderr.contains(c.says), "\(r.stderr.prefix(500))")
        #expect(r.maxRSSKB < Self.memoryLimitKB, "peak RSS \(r.maxRSSKB) KB")
    }

    /// The reading limits hold for packetdrill scripts too (`klab validate foo.pkt`): the cases
    /// that are about the file rather than YAML, and expressions nested past the limit, which
    /// overflowed the recursive-descent parser's stack before (a crash, exit 139).
    static let pktCases: [Case] = cases.filter {
        ["a line of 10 MB", "a file of 300 MB", "invalid UTF-8", "binary", "UTF-16", "a FIFO", "a directory", "/dev/zero"].contains($0.name)
    } + [
        // `0 write(3, ` is 11 characters: the 65th '[' is at column 76.
        Case(name: "nested lists", make: text("0 write(3, " + String(repeating: "[", count: 200_000) + "1" + String(repeating: "]", count: 200_000) + ", 1) = 1\n"),
             at: "1:76", says: "an expression nested more than 64 deep"),
        // Each `|` nests the rest of the flags: the 64th `|` opens the 65th expression.
        Case(name: "a long chain of flags", make: text("0 fcntl(3, F_SETFL, " + Array(repeating: "O_RDWR", count: 100_000).joined(separator: "|") + ") = 0\n"),
             at: "1:\(21 + 64 * 7)", says: "an expression nested more than 64 deep"),
    ]

    @Test(arguments: pktCases)
    func pktRejectedWhereItIsWithBoundedMemory(_ c: Case) throws {
        try expectRejected(c, as: "hostile.pkt")
    }

    /// The largest file the node limit lets through: 9,990 packet lines. It is read whole
    /// (accepted), and within the memory bound.
    @Test func theLargestAcceptedFileStaysInBounds() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = "\(dir)/big.yaml"
        let step = "- < S 0:0(0) win 65535 <mss 1460>\n"
        try ("name: big\nsteps:\n" + String(repeating: step, count: 9_990)).write(toFile: file, atomically: false, encoding: .utf8)
        let r = try klabMeasured(["validate", file], in: dir)
        #expect(r.status == 0, "\(r.stderr.prefix(500))")
        #expect(r.stdout.contains("9990 steps"))
        #expect(r.maxRSSKB < Self.memoryLimitKB, "peak RSS \(r.maxRSSKB) KB")
    }

    /// Yams reads YAMS_DEFAULT_ENCODING unless told the encoding: with UTF16 it printed a notice
    /// on stdout and parsed the UTF-8 file as UTF-16. klab names UTF-8 itself.
    @Test func yamsEncodingVariableIsIgnored() throws {
        let file = "\(packageRoot)/lab/scenarios/icmp-echo.yaml"
        let plain = try klab(["validate", file])
        let r = try klab(["validate", file], environment: ["YAMS_DEFAULT_ENCODING": "UTF16"])
        #expect(plain.status == 0 && r.status == 0, "\(r.stderr)")
        #expect(r.stdout == plain.stdout, "\(r.stdout)")
    }
}

struct Measured {
    let status: Int32
    let stdout: String
    let stderr: String
    /// Peak resident memory of the child, from wait4(2)'s rusage.
    let maxRSSKB: Int
}

/// Runs klab under a small python3 parent that forks it and reaps it with wait4, which reports
/// the child's own peak RSS. Spawned from this test process directly, the peak would include
/// the test process's own: exec keeps the old address space's high-water mark, and
/// posix_spawn's child runs in the parent's until it execs.
private let measureScript = """
    import os, sys
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[2], sys.argv[2:])
    _, status, usage = os.wait4(pid, 0)
    open(sys.argv[1], "w").write(str(usage.ru_maxrss))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    """

func klabMeasured(_ args: [String], in dir: String) throws -> Measured {
    let rssFile = "\(dir)/klab.maxrss"
    let (out, err) = ("\(dir)/klab.stdout", "\(dir)/klab.stderr")
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let python = "/usr/bin/python3"
    let argv = ([python, "-c", measureScript, rssFile, klabBinary] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, python, &actions, nil, argv, environ)
    guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
    let text = { (p: String) in (try? String(contentsOfFile: p, encoding: .utf8)) ?? "" }
    let exited = status & 0x7F == 0
    let maxRSS = Int(text(rssFile).trimmingCharacters(in: .whitespacesAndNewlines)) ?? Int.max  // no figure: the bound fails
    return Measured(status: exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F), stdout: text(out), stderr: text(err), maxRSSKB: maxRSS)
}
